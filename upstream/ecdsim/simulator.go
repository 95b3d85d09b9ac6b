// Package ecdsim simulates Alibaba Cloud ECD's DescribeImageModifiedRecords
// endpoint (version 2020-09-30) as an [http.Handler], for tests, the demo
// and benchmarks.
//
// The simulator verifies signature V3 (ACS3-HMAC-SHA256) and V1
// (HMAC-SHA1) with package acs, the signer the client uses too (checked
// against Alibaba's official signing code; see its doc), checks timestamps
// (15 minutes either way), signature nonces and STS security tokens, and
// answers with the upstream's JSON, errors included. Each desktop's records
// are a pure function of the seed, the desktop id and the record index, made
// page by page, so a desktop of a million records costs no memory. Faults
// (latency, throttling, server errors, a NextToken that never advances) can
// be injected, deterministically for a seed and a request sequence.
//
// Beyond faults, the simulator has an account quota ([Quota], a token
// bucket on the simulator clock answered with the same Throttling.User as
// an injected throttle), a set of served regions ([Config.Regions]), live
// desktops whose image changes start, run and settle as the simulator
// clock advances ([Live]), and two record orders ([Order]).
//
// The checks run in this order: the HTTP method (GET or POST, else 405);
// authentication (signature parts, access key, timestamp, body hash,
// signature, security token, nonce); the action and version; the account
// quota; the injected throttling and server errors; the parameters
// RegionId (missing, then not served: 404 InvalidRegionId), DesktopId
// (then the desktop itself), MaxResults and NextToken. Injected latency
// delays every response, errors included.
//
// # Paging
//
// A NextToken encodes a position among the desktop's records counted
// oldest first, never an offset from the newest, so records a live desktop
// adds while a client pages do not shift the pages. With [OldestFirst] a
// token is the index of the next record to serve; a record that starts
// before the client asks for the page that reaches it appears on that
// page (the last page of a pass that began earlier may then carry a
// NextToken to one more page); one that starts after the client got a
// page without NextToken is not seen in that pass. With [NewestFirst] a
// token is the count of older records still to serve; a record that
// starts during the pass is not seen in it, and no record is repeated or
// skipped. In both orders TotalCount is the count at the instant of each
// page, so it can grow from page to page, and a change's record shows the
// status it has when its page is served.
package ecdsim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imagerecords/imagerecords/upstream/acs"
)

const (
	action     = "DescribeImageModifiedRecords"
	apiVersion = "2020-09-30"

	defaultMaxResults = 10
	maxMaxResults     = 100
	// maxBody bounds the request body the simulator reads.
	maxBody     = 1 << 20
	contentType = "application/json;charset=utf-8"
)

// Key is an access key the simulator accepts.
type Key struct {
	// AccessKeyID identifies the key.
	AccessKeyID string
	// AccessKeySecret signs the requests.
	AccessKeySecret string
	// SecurityToken, when not empty, makes this an STS key: its requests
	// must carry exactly this token (x-acs-security-token for V3,
	// SecurityToken for V1). A long-term key's requests must carry none.
	SecurityToken string
}

// Faults are the faults injected into authenticated requests.
type Faults struct {
	// Latency delays every response; the wait ends early, and nothing is
	// written, when the request's context is done.
	Latency time.Duration
	// ThrottleFraction of authenticated requests, 0..1, are answered 400
	// Throttling.User.
	ThrottleFraction float64
	// ServerErrorFraction of authenticated requests, 0..1, are answered
	// 503 ServiceUnavailable and 500 InternalError, alternately. The two
	// fractions share one draw: with a sum above 1, throttling wins.
	ServerErrorFraction float64
}

// Order is the order in which the simulator serves a desktop's records.
// The real API does not document its order, so a client must work with
// both.
type Order int

const (
	// OldestFirst serves records by increasing UpdateTime.
	OldestFirst Order = iota
	// NewestFirst serves records by decreasing UpdateTime.
	NewestFirst
)

// String returns "oldest" or "newest".
func (o Order) String() string {
	switch o {
	case OldestFirst:
		return "oldest"
	case NewestFirst:
		return "newest"
	}
	return "Order(" + strconv.Itoa(int(o)) + ")"
}

// Config configures a [Simulator].
type Config struct {
	// Seed determines the desktop ids of DefaultDesktops, every record,
	// the live changes, the NextTokens, the RequestIds and the fault
	// decisions.
	Seed int64
	// Desktops are the simulated desktops; empty means DefaultDesktops(Seed).
	Desktops []Desktop
	// Keys are the accepted access keys; at least one is required.
	Keys []Key
	// Regions are the region ids served; a request for another is answered
	// InvalidRegionId. Empty means DefaultRegions(). The first is the
	// region named in the HostId of errors for requests whose RegionId is
	// missing or not served.
	Regions []string
	// Faults are the initial faults; see [Simulator.SetFaults].
	Faults Faults
	// Quota is the initial account quota; see [Simulator.SetQuota]. The
	// zero value means no quota.
	Quota Quota
	// Live configures the changes of the desktops marked [Desktop.Live].
	Live Live
	// Order is the order of the records in a page; the zero value is
	// OldestFirst.
	Order Order
	// Now is the simulator clock for timestamp checks, the quota and the
	// live desktops; nil means time.Now. Live desktops start changing
	// after the time it reads in New.
	Now func() time.Time
}

// Stats counts the simulator's requests and answers.
type Stats struct {
	// Requests counts every request received.
	Requests int64
	// Pages counts the 200 answers.
	Pages int64
	// Throttled counts the injected Throttling.User answers.
	Throttled int64
	// QuotaThrottled counts the Throttling.User answers of the account
	// quota.
	QuotaThrottled int64
	// ServerErrors counts the injected 5xx answers.
	ServerErrors int64
	// AuthFailures counts the answers to requests that failed
	// authentication.
	AuthFailures int64
	// BadRequests counts the other error answers: method, action, version
	// and parameter errors.
	BadRequests int64
}

// Simulator is the simulated endpoint. It is safe for concurrent use.
type Simulator struct {
	now        func() time.Time
	keys       map[string]Key
	desktops   map[string]*desktop
	list       []Desktop
	regions    map[string]bool
	regionList []string
	order      Order
	tokens     *tokenCodec
	nonces     *nonceStore
	faults     atomic.Pointer[Faults]
	quota      bucket

	rngMu sync.Mutex
	rng   *rand.Rand

	reqIDBase uint64
	reqIDMix  uint64
	reqSeq    atomic.Uint64

	requests, pages, throttled, quotaThrottled, serverErrors, authFailures, badRequests atomic.Int64
}

type desktop struct {
	Desktop
	hash     uint64
	calls    atomic.Int64
	timeline *timeline // nil unless Live
}

// New returns a simulator for cfg.
func New(cfg Config) (*Simulator, error) {
	if len(cfg.Keys) == 0 {
		return nil, errors.New("ecdsim: at least one access key is required")
	}
	if err := errors.Join(checkFaults(cfg.Faults), checkQuota(cfg.Quota), checkLive(cfg.Live)); err != nil {
		return nil, err
	}
	if cfg.Order != OldestFirst && cfg.Order != NewestFirst {
		return nil, fmt.Errorf("ecdsim: unknown record order %d", cfg.Order)
	}
	s := &Simulator{
		now:        cfg.Now,
		keys:       make(map[string]Key, len(cfg.Keys)),
		desktops:   make(map[string]*desktop),
		regions:    make(map[string]bool),
		regionList: slices.Clone(cfg.Regions),
		order:      cfg.Order,
		tokens:     newTokenCodec(cfg.Seed),
		nonces:     newNonceStore(),
	}
	if s.now == nil {
		s.now = time.Now
	}
	start := s.now()
	if len(s.regionList) == 0 {
		s.regionList = DefaultRegions()
	}
	for _, r := range s.regionList {
		if err := checkRegion(r); err != nil {
			return nil, err
		}
		s.regions[r] = true
	}
	for _, k := range cfg.Keys {
		if k.AccessKeyID == "" || k.AccessKeySecret == "" {
			return nil, errors.New("ecdsim: an access key needs an id and a secret")
		}
		if _, dup := s.keys[k.AccessKeyID]; dup {
			return nil, fmt.Errorf("ecdsim: access key %s is given twice", k.AccessKeyID)
		}
		s.keys[k.AccessKeyID] = k
	}
	s.list = slices.Clone(cfg.Desktops)
	if len(s.list) == 0 {
		s.list = DefaultDesktops(cfg.Seed)
	}
	for _, d := range s.list {
		switch {
		case d.ID == "":
			return nil, errors.New("ecdsim: a desktop needs an id")
		case d.Records < 0 || d.Records > MaxRecords:
			return nil, fmt.Errorf("ecdsim: desktop %s: record count %d is outside 0..%d", d.ID, d.Records, MaxRecords)
		case s.desktops[d.ID] != nil:
			return nil, fmt.Errorf("ecdsim: desktop %s is given twice", d.ID)
		}
		dt := &desktop{Desktop: d, hash: desktopHash(cfg.Seed, d.ID)}
		if d.Live {
			dt.timeline = newTimeline(dt, cfg.Live, start)
		}
		s.desktops[d.ID] = dt
	}
	f := cfg.Faults
	s.faults.Store(&f)
	s.quota.set(cfg.Quota)
	sh := seedHash(cfg.Seed)
	s.rng = rand.New(rand.NewPCG(sh, mix64(sh^0x8E9A1C3F5D7B2E41)))
	s.reqIDBase = mix64(sh ^ 0x3C6EF372FE94F82B)
	s.reqIDMix = mix64(sh ^ 0xA54FF53A5F1D36F1)
	return s, nil
}

func checkFaults(f Faults) error {
	switch {
	case f.Latency < 0:
		return fmt.Errorf("ecdsim: latency %v is negative", f.Latency)
	case !(f.ThrottleFraction >= 0 && f.ThrottleFraction <= 1):
		return fmt.Errorf("ecdsim: throttle fraction %v is outside 0..1", f.ThrottleFraction)
	case !(f.ServerErrorFraction >= 0 && f.ServerErrorFraction <= 1):
		return fmt.Errorf("ecdsim: server error fraction %v is outside 0..1", f.ServerErrorFraction)
	}
	return nil
}

// SetFaults replaces the injected faults; requests already running keep
// the faults they started with. Out-of-range values are clamped: a
// negative latency to 0, fractions to 0..1 (NaN to 0). It is safe for
// concurrent use.
func (s *Simulator) SetFaults(f Faults) {
	f.Latency = max(f.Latency, 0)
	f.ThrottleFraction = clampFraction(f.ThrottleFraction)
	f.ServerErrorFraction = clampFraction(f.ServerErrorFraction)
	s.faults.Store(&f)
}

func clampFraction(x float64) float64 {
	if math.IsNaN(x) {
		return 0
	}
	return min(max(x, 0), 1)
}

// Desktops returns the simulated desktops, in configuration order.
func (s *Simulator) Desktops() []Desktop { return slices.Clone(s.list) }

// Record returns record i (0-based, oldest first) of a desktop, exactly as
// the simulator serves it now (by its clock), or false when there is no
// such desktop or record. See [Simulator.Records] for another instant.
func (s *Simulator) Record(desktopID string, i int) (Record, bool) {
	d := s.desktops[desktopID]
	if d == nil || i < 0 {
		return Record{}, false
	}
	v := d.view(s.now())
	if i >= v.total {
		return Record{}, false
	}
	p := v.record(i)
	return p.record(), true
}

// Regions returns the served regions, in configuration order.
func (s *Simulator) Regions() []string { return slices.Clone(s.regionList) }

// Stats returns a snapshot of the counters.
func (s *Simulator) Stats() Stats {
	return Stats{
		Requests:       s.requests.Load(),
		Pages:          s.pages.Load(),
		Throttled:      s.throttled.Load(),
		QuotaThrottled: s.quotaThrottled.Load(),
		ServerErrors:   s.serverErrors.Load(),
		AuthFailures:   s.authFailures.Load(),
		BadRequests:    s.badRequests.Load(),
	}
}

// DesktopCalls counts the authenticated requests for a configured desktop
// that got past the faults to the desktop lookup, whatever their answer (a
// page, or a MaxResults or NextToken error). It is 0 for an unknown id.
func (s *Simulator) DesktopCalls(desktopID string) int64 {
	if d := s.desktops[desktopID]; d != nil {
		return d.calls.Load()
	}
	return 0
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// ServeHTTP answers one DescribeImageModifiedRecords request.
func (s *Simulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	faults := s.faults.Load()
	reqID := s.requestID()
	bp := bufPool.Get().(*[]byte)
	status, rateLimit, body := s.handle(r, reqID, faults, (*bp)[:0])
	defer func() {
		if cap(body) <= 1<<20 {
			*bp = body[:0]
			bufPool.Put(bp)
		}
	}()
	if faults.Latency > 0 && !sleep(r.Context(), faults.Latency) {
		return
	}
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("X-Acs-Request-Id", reqID)
	if status == http.StatusMethodNotAllowed {
		h.Set("Allow", "GET, POST")
	}
	if rateLimit != "" {
		h.Set("x-ratelimit-user-api", rateLimit)
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// handle appends the answer to b and returns its HTTP status and the
// x-ratelimit-user-api header to send, if any.
func (s *Simulator) handle(r *http.Request, reqID string, faults *Faults, b []byte) (int, string, []byte) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		st, b := s.fail(b, reqID, s.regionList[0], &apiError{status: http.StatusMethodNotAllowed, code: "UnsupportedHTTPMethod", kind: kindBad,
			msg: "The HTTP method " + r.Method + " is not supported; use GET or POST."})
		return st, "", b
	}
	req := request{r: r, query: r.URL.Query()}
	req.params = req.query
	if e := readBody(&req); e != nil {
		st, b := s.fail(b, reqID, s.hostRegion(req.params.Get("RegionId")), e)
		return st, "", b
	}
	region := s.hostRegion(req.params.Get("RegionId"))
	now := s.now()
	if e := s.authenticate(&req, now); e != nil {
		st, b := s.fail(b, reqID, region, e)
		return st, "", b
	}
	if e := s.admit(&req, faults, now); e != nil {
		st, b := s.fail(b, reqID, region, e)
		return st, e.rateLimit, b
	}
	st, b := s.page(b, reqID, region, req.params, now)
	return st, "", b
}

// errThrottled is the answer of the account quota and of injected
// throttling.
func errThrottled(kind errKind) *apiError {
	return &apiError{status: http.StatusBadRequest, code: "Throttling.User", kind: kind,
		msg: "Request was denied due to user flow control."}
}

// admit checks an authenticated request's action and version, then takes
// its token from the account quota and draws its injected fault.
func (s *Simulator) admit(req *request, faults *Faults, now time.Time) *apiError {
	if req.action != action {
		return &apiError{status: http.StatusNotFound, code: "InvalidAction.NotFound", kind: kindBad,
			msg: "Specified api is not found, please check your url and method."}
	}
	if req.version != apiVersion {
		return &apiError{status: http.StatusBadRequest, code: "InvalidVersion", kind: kindBad,
			msg: "Specified parameter Version is not valid; use " + apiVersion + "."}
	}
	if ok, wait, q := s.quota.take(now); !ok {
		e := errThrottled(kindQuota)
		if q.Hint {
			e.rateLimit = rateLimitHeader(q, wait)
		}
		return e
	}
	if faults.ThrottleFraction > 0 || faults.ServerErrorFraction > 0 {
		s.rngMu.Lock()
		u := s.rng.Float64()
		s.rngMu.Unlock()
		switch {
		case u < faults.ThrottleFraction:
			return errThrottled(kindThrottle)
		case u < faults.ThrottleFraction+faults.ServerErrorFraction:
			if s.serverErrors.Load()%2 == 0 {
				return &apiError{status: http.StatusServiceUnavailable, code: "ServiceUnavailable", kind: kindServer,
					msg: "The request has failed due to a temporary failure of the server."}
			}
			return &apiError{status: http.StatusInternalServerError, code: "InternalError", kind: kindServer,
				msg: "The request processing has failed due to some unknown error, exception or failure."}
		}
	}
	return nil
}

// readBody reads a POST's body into req.body and merges a form body's
// parameters into req.params.
func readBody(req *request) *apiError {
	r := req.r
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return &apiError{status: http.StatusBadRequest, code: "InvalidParameter", kind: kindBad, msg: "The request body could not be read."}
	}
	if len(body) > maxBody {
		return &apiError{status: http.StatusRequestEntityTooLarge, code: "RequestEntityTooLarge", kind: kindBad,
			msg: "The request body is larger than " + strconv.Itoa(maxBody) + " bytes."}
	}
	req.body = body
	if r.Method != http.MethodPost || len(body) == 0 {
		return nil
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" {
		return nil
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return &apiError{status: http.StatusBadRequest, code: "InvalidParameter", kind: kindBad,
			msg: "The application/x-www-form-urlencoded body is malformed."}
	}
	merged := make(url.Values, len(req.query)+len(form))
	for k, v := range req.query {
		merged[k] = slices.Clone(v)
	}
	for k, v := range form {
		merged[k] = append(merged[k], v...)
	}
	req.params = merged
	return nil
}

func payloadHash(body []byte) string {
	if len(body) == 0 {
		return acs.EmptyPayloadHash
	}
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:])
}

// page checks the parameters and appends one page as it is at now.
func (s *Simulator) page(b []byte, reqID, region string, p url.Values, now time.Time) (int, []byte) {
	if p.Get("RegionId") == "" {
		return s.fail(b, reqID, region, &apiError{status: http.StatusBadRequest, code: "MissingRegionId", kind: kindBad,
			msg: "RegionId is mandatory for this action."})
	}
	if !s.regions[p.Get("RegionId")] {
		return s.fail(b, reqID, region, errUnknownRegion())
	}
	desktopID := p.Get("DesktopId")
	if desktopID == "" {
		return s.fail(b, reqID, region, &apiError{status: http.StatusBadRequest, code: "MissingDesktopId", kind: kindBad,
			msg: "DesktopId is mandatory for this action."})
	}
	d := s.desktops[desktopID]
	if d == nil {
		return s.fail(b, reqID, region, &apiError{status: http.StatusBadRequest, code: "InvalidDesktopId.NotFound", kind: kindBad,
			msg: "The specified desktop " + desktopID + " is not found."})
	}
	d.calls.Add(1)
	limit := defaultMaxResults
	if v := p.Get("MaxResults"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxMaxResults {
			return s.fail(b, reqID, region, &apiError{status: http.StatusBadRequest, code: "InvalidParameter", kind: kindBad,
				msg: "The parameter MaxResults must be an integer from 1 to 100, not " + strconv.Quote(v) + "."})
		}
		limit = n
	}
	v := d.view(now)
	token := p.Get("NextToken")
	// pos is a position among the records oldest first: with OldestFirst
	// the index of the first record to serve, with NewestFirst the count
	// of records to serve before the pass ends.
	pos := 0
	if s.order == NewestFirst {
		pos = v.total
	}
	if token != "" {
		var ok bool
		if pos, ok = s.tokens.decode(d.ID, token); !ok || pos > v.total {
			return s.fail(b, reqID, region, &apiError{status: http.StatusBadRequest, code: "InvalidParameter.NextToken", kind: kindBad,
				msg: "The specified NextToken is not valid for this desktop."})
		}
	}
	// The page holds the records of indices [lo, hi), served from lo up
	// or from hi-1 down; end is the position after the page.
	lo, hi, end, more := pos, min(pos+limit, v.total), 0, false
	if s.order == NewestFirst {
		lo, hi = max(pos-limit, 0), pos
		end, more = lo, lo > 0
	} else {
		end, more = hi, hi < v.total
	}
	next := ""
	switch {
	case d.StuckToken && token != "":
		next = token
	case d.StuckToken || more:
		next = s.tokens.encode(d.ID, end)
	}

	s.pages.Add(1)
	b = append(b, `{"RequestId":"`...)
	b = append(b, reqID...)
	b = append(b, `","TotalCount":`...)
	b = strconv.AppendInt(b, int64(v.total), 10)
	if next != "" {
		// Tokens are base64: nothing in them needs escaping.
		b = append(b, `,"NextToken":"`...)
		b = append(b, next...)
		b = append(b, '"')
	}
	b = append(b, `,"ImageModifiedRecords":[`...)
	for k := range hi - lo {
		if k > 0 {
			b = append(b, ',')
		}
		i := lo + k
		if s.order == NewestFirst {
			i = hi - 1 - k
		}
		rec := v.record(i)
		b = rec.appendJSON(b)
	}
	b = append(b, "]}"...)
	return http.StatusOK, b
}

// requestID returns a fresh UUID-shaped RequestId. The first 64 bits are a
// bijection of a counter, so ids are unique.
func (s *Simulator) requestID() string {
	n := s.reqSeq.Add(1)
	x := mix64(s.reqIDBase + n)
	y := mix64(x ^ s.reqIDMix)
	const digits = "0123456789ABCDEF"
	var out [36]byte
	j := 0
	for k := 0; k < 32; k++ {
		if k == 8 || k == 12 || k == 16 || k == 20 {
			out[j] = '-'
			j++
		}
		w := x
		if k >= 16 {
			w = y
		}
		out[j] = digits[(w>>(60-4*(k%16)))&15]
		j++
	}
	return string(out[:])
}

type errKind int

const (
	kindAuth errKind = iota
	kindBad
	kindThrottle
	kindQuota
	kindServer
)

// apiError is an error answer.
type apiError struct {
	status    int
	code      string
	msg       string
	kind      errKind
	rateLimit string // the x-ratelimit-user-api header, if any
}

// fail counts e and appends its JSON.
func (s *Simulator) fail(b []byte, reqID, region string, e *apiError) (int, []byte) {
	switch e.kind {
	case kindAuth:
		s.authFailures.Add(1)
	case kindBad:
		s.badRequests.Add(1)
	case kindThrottle:
		s.throttled.Add(1)
	case kindQuota:
		s.quotaThrottled.Add(1)
	case kindServer:
		s.serverErrors.Add(1)
	}
	b = append(b, `{"RequestId":"`...)
	b = append(b, reqID...)
	b = append(b, `","HostId":"ecd.`...)
	b = append(b, region...)
	b = append(b, `.aliyuncs.com","Code":`...)
	b = appendJSONString(b, e.code)
	b = append(b, `,"Message":`...)
	b = appendJSONString(b, e.msg)
	b = append(b, `,"Recommend":`...)
	b = appendJSONString(b, "https://api.aliyun.com/troubleshoot?q="+url.QueryEscape(e.code)+"&product=ecd")
	b = append(b, '}')
	return e.status, b
}
