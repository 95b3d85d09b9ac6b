package upstream

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/imagerecords/imagerecords/upstream/acs"
)

const (
	// Action is the one upstream action this client calls.
	Action = "DescribeImageModifiedRecords"
	// APIVersion is the ECD API version.
	APIVersion = "2020-09-30"
	// MaxPageSize is the upstream's largest MaxResults.
	MaxPageSize = 100
	// DefaultPageSize is the upstream's MaxResults when none is sent.
	DefaultPageSize = 10
	// DefaultMaxResponseBytes caps an upstream response body. A full page
	// of 100 records is about 40 KiB.
	DefaultMaxResponseBytes = 4 << 20
)

// DescribeInput is one DescribeImageModifiedRecords request.
type DescribeInput struct {
	RegionID  string
	DesktopID string
	// MaxResults is the page size, 1..100; 0 leaves it to the upstream (10).
	MaxResults int
	// NextToken is the previous page's NextToken; empty for the first page.
	NextToken string
}

// Page is one DescribeImageModifiedRecords answer.
type Page struct {
	// RequestID is the upstream RequestId.
	RequestID string
	// TotalCount is the desktop's number of records, as the upstream counts.
	TotalCount int
	// NextToken requests the next page; empty on the last page.
	NextToken string
	// Records are the page's image changes in upstream order.
	Records []Record
	// Resume is set by [Pages] only: where a new sequence continues right
	// after this page's Records; the zero Cursor when nothing follows.
	Resume Cursor
	// list is the pooled list Records is a part of, until [Page.Release].
	list *[]Record
}

// A Cursor is a position in a desktop's records: the NextToken of an
// upstream page (empty for the first page) and how many records of that
// page come before the position. A Skip lets a sequence cut by a record
// limit resume in the middle of an upstream page.
type Cursor struct {
	Token string
	Skip  int
}

// Record is one image change.
type Record struct {
	// Status is the upstream number: 0 changing, 1 succeeded, 2 failed;
	// any other value is kept as it came.
	Status       int
	UpdateTime   time.Time
	ImageID      string
	ImageName    string
	NewImageID   string
	NewImageName string
	Reason       string
}

// API is the one upstream call the gateway makes. [Client] implements it;
// tests may substitute their own.
type API interface {
	DescribeImageModifiedRecords(ctx context.Context, in DescribeInput) (*Page, error)
}

var _ API = (*Client)(nil)

// Client calls DescribeImageModifiedRecords with signed requests. It is safe
// for concurrent use.
type Client struct {
	endpoint         string
	endpointURL      string // endpoint with the path /; "" if invalid
	transport        http.RoundTripper
	credentials      CredentialsProvider
	signature        SignatureVersion
	retry            RetryPolicy
	maxResponseBytes int64
	now              func() time.Time
	logger           *slog.Logger
	tracerProvider   trace.TracerProvider
	tracer           trace.Tracer
	meterProvider    metric.MeterProvider
	metrics          instruments
	pacer            *Pacer
	shared           *sharedBudget // nil: none
	maxWait          time.Duration
	budget           *RetryBudget
	attemptTimeout   time.Duration
}

// Option configures a [Client].
type Option func(*Client)

// WithEndpoint overrides the regional endpoint https://ecd.<region>.aliyuncs.com
// with a base URL such as a VPC proxy (https://ecd.vpc-proxy.aliyuncs.com) or
// a simulator (http://127.0.0.1:9000). Default: regional.
func WithEndpoint(baseURL string) Option {
	return func(c *Client) { c.endpoint = strings.TrimRight(baseURL, "/") }
}

// WithTransport sets the transport that carries the upstream requests.
// Default: [NewTransport].
func WithTransport(rt http.RoundTripper) Option {
	return func(c *Client) { c.transport = rt }
}

// WithSignatureVersion selects V3 (default) or V1 signing.
func WithSignatureVersion(v SignatureVersion) Option {
	return func(c *Client) { c.signature = v }
}

// WithRetryPolicy sets how failed attempts are retried. Default:
// [DefaultRetryPolicy].
func WithRetryPolicy(p RetryPolicy) Option {
	return func(c *Client) { c.retry = p }
}

// WithClock sets the clock that dates signatures. Default: time.Now.
func WithClock(now func() time.Time) Option {
	return func(c *Client) { c.now = now }
}

// WithLogger sets the logger for retries. Default: discard.
func WithLogger(l *slog.Logger) Option {
	return func(c *Client) { c.logger = l }
}

// WithMaxResponseBytes caps the size of one upstream response body; a
// larger one fails with [ErrMalformedResponse]. Default:
// [DefaultMaxResponseBytes].
func WithMaxResponseBytes(n int64) Option {
	return func(c *Client) { c.maxResponseBytes = n }
}

// WithTracerProvider sets where the span of every upstream attempt goes.
// Default: the global OTel tracer provider.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *Client) { c.tracerProvider = tp }
}

// WithMeterProvider sets where the upstream metrics go. Default: the
// global OTel meter provider.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *Client) { c.meterProvider = mp }
}

// NewClient returns a client that signs with the credentials from creds,
// fetched anew for every attempt.
func NewClient(creds CredentialsProvider, opts ...Option) *Client {
	c := &Client{
		credentials:      creds,
		signature:        SignatureV3,
		retry:            DefaultRetryPolicy(),
		maxResponseBytes: DefaultMaxResponseBytes,
		now:              time.Now,
		logger:           slog.New(slog.DiscardHandler),
		tracerProvider:   otel.GetTracerProvider(),
		meterProvider:    otel.GetMeterProvider(),
		budget:           NewRetryBudget(0.1, 20),
		attemptTimeout:   DefaultAttemptTimeout,
		maxWait:          DefaultMaxWait,
	}
	for _, opt := range opts {
		opt(c)
	}
	if c.endpoint != "" {
		c.endpointURL = endpointRequestURL(c.endpoint)
	}
	if c.transport == nil {
		c.transport = NewTransport()
	}
	if c.pacer == nil {
		c.pacer = NewPacer(0, 1)
	}
	if c.shared != nil {
		c.pacer.setShared()
	}
	c.metrics = newInstruments(c.meterProvider)
	c.metrics.observePacer(c.meterProvider, c.pacer)
	c.tracer = c.tracerProvider.Tracer(instrumentationName)
	return c
}

// errAttemptTimeout is the cause of an attempt's context ended by
// WithAttemptTimeout.
var errAttemptTimeout = errors.New("upstream attempt timed out")

// SpanName names the client span of every upstream attempt.
const SpanName = "ecd " + Action

// clientSpan starts every attempt's span.
var clientSpan = trace.WithSpanKind(trace.SpanKindClient)

// NewTransport returns the default upstream transport: HTTP/2 where the
// endpoint offers it, and a keep-alive pool large enough that concurrent
// streams reuse connections instead of dialing anew.
//
// Over HTTP/1.1 every call in flight holds a connection of its own, and
// each connection keeps a read and a write buffer for as long as it is
// open (1,000 concurrent streams: 1,000 connections). Net/http's 4 KiB
// buffers are twice what a call needs: a signed request is under 1 KiB
// (about 2 KiB with an STS token), an answer's header a few hundred
// bytes, and the body (about 24 KB a page) is read past the buffer, into
// the pooled body buffer, in as many reads either way.
func NewTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 1024
	t.MaxIdleConnsPerHost = 1024
	t.IdleConnTimeout = 90 * time.Second
	t.ResponseHeaderTimeout = 30 * time.Second
	t.ReadBufferSize = transportBufferSize
	t.WriteBufferSize = transportBufferSize
	// A stream asks for its next page as soon as it has read one, often
	// before that page's connection is back in the pool: uncapped, such a
	// call dials another, and 1,000 streams kept up to about 1,750
	// connections (two goroutines and two buffers each). Capped at what the
	// pool keeps, the call takes the connection that comes back instead; a
	// call beyond the cap waits for one (1,024 calls in flight at once is
	// 100 QPS at 10 s a call).
	t.MaxConnsPerHost = t.MaxIdleConnsPerHost
	return t
}

// transportBufferSize is the size of an upstream connection's read and of
// its write buffer.
const transportBufferSize = 2 << 10

// Pacer returns the client's pacer.
func (c *Client) Pacer() *Pacer { return c.pacer }

// Endpoint returns the base URL requests for region go to.
func (c *Client) Endpoint(region string) string {
	if c.endpoint != "" {
		return c.endpoint
	}
	return "https://ecd." + region + ".aliyuncs.com"
}

// DescribeImageModifiedRecords fetches one page. Every attempt waits for
// its turn with the client's [Pacer]. A throttled attempt is retried,
// paced, until the caller's deadline or until the page has waited the
// client's max wait ([WithMaxWait]): throttling is backpressure, and
// spends neither attempts nor the retry budget. Other failures are
// retried when another attempt may succeed ([RetryPolicy], [RetryBudget]):
// transient upstream faults and network errors with backoff, a used nonce
// or an expired STS token once at once; never once ctx is done or when the
// wait would end past its deadline. Errors are an [*APIError] for an
// upstream error answer, [ErrMalformedResponse] for an answer that makes
// no sense, [ErrNoCredentials], [ErrPacingDeadline] when the caller's
// deadline comes before a turn, or a network or context error.
func (c *Client) DescribeImageModifiedRecords(ctx context.Context, in DescribeInput) (*Page, error) {
	if err := in.check(); err != nil {
		return nil, err
	}
	stats := callStatsFrom(ctx)
	c.budget.onCall()
	start := time.Now()
	var waited time.Duration // for quota: turns and throttling hints
	attempt, failures := 0, 0
	retriedOnce := false // the one retry of a used nonce or an expired token
	var last error       // the error of the previous attempt, when retrying
	for {
		wait := c.pacer.Wait
		if last != nil {
			wait = c.pacer.waitRetry // a retry keeps its caller's turn
		}
		w, err := wait(ctx)
		if err == nil {
			var shared time.Duration
			shared, err = c.takeShared(ctx, in)
			w += shared
		}
		waited += w
		c.metrics.quotaWait.Record(ctx, w.Seconds())
		switch {
		case err == nil:
		case last == nil:
			return nil, fmt.Errorf("waiting for an upstream quota turn: %w", err)
		case errors.Is(err, ErrPacingDeadline):
			return nil, last // no turn before the deadline: the last answer stands
		default:
			return nil, fmt.Errorf("waiting to retry after %w: %w", last, err)
		}
		attempt++
		sent := time.Now()
		page, err := c.attempt(ctx, in, attempt)
		c.pacer.Observe(sent, outcomeOf(err))
		if stats != nil {
			stats.Calls.Add(1)
		}
		if err == nil {
			c.budget.onSuccess()
			return page, nil
		}
		var delay time.Duration
		retry := false
		if classify(err) == retryThrottled {
			delay, retry = c.throttledDelay(ctx, err, waited, start)
			waited += delay
		} else {
			failures++
			if delay, retry = c.nextDelay(ctx, err, failures, &retriedOnce); retry && !c.budget.withdraw() {
				c.metrics.budgetExhausted.Add(ctx, 1)
				retry = false
			}
		}
		last = err
		if !retry {
			if cause := context.Cause(ctx); cause != nil && !errors.Is(err, cause) {
				// The caller gave up while this attempt ended: say both.
				err = fmt.Errorf("%w (after %w)", cause, err)
			}
			return nil, err
		}
		code := errorCode(err)
		c.metrics.retries.Add(ctx, 1, metric.WithAttributes(semconv.ErrorTypeKey.String(code)))
		if stats != nil {
			stats.Retries.Add(1)
		}
		trace.SpanFromContext(ctx).AddEvent("upstream retry backoff", trace.WithAttributes(
			attribute.Int("ecd.attempt", attempt),
			attribute.String("ecd.error.code", code),
			attribute.Int64("ecd.backoff_ms", delay.Milliseconds()),
		))
		c.logger.LogAttrs(ctx, slog.LevelDebug, "retrying upstream call",
			slog.Int("attempt", attempt), slog.Duration("backoff", delay), slog.String("error", err.Error()))
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, fmt.Errorf("waiting to retry after %w: %w", err, context.Cause(ctx))
			case <-t.C:
			}
		}
	}
}

// outcomeOf is what an attempt's error tells the pacer.
func outcomeOf(err error) Outcome {
	switch {
	case err == nil:
		return Succeeded
	case classify(err) == retryThrottled:
		return Throttled
	}
	return Failed
}

// throttledDelay says whether a throttled page is tried again, and after
// how long beyond its next turn with the pacer (which the throttle has
// slowed): the upstream's TimeLeft hint if it sent one. Not once the page
// has waited the max wait, or when the hint would outlast it or the
// caller's deadline.
func (c *Client) throttledDelay(ctx context.Context, err error, waited time.Duration, start time.Time) (time.Duration, bool) {
	if ctx.Err() != nil {
		return 0, false
	}
	var hint time.Duration
	if apiErr, ok := errors.AsType[*APIError](err); ok {
		hint, _ = apiErr.ThrottlingHint()
	}
	if c.maxWait <= 0 || waited+hint > c.maxWait || time.Since(start) > c.maxWait+c.attemptTimeout {
		return 0, false // the caller learns the wait from RetryInfo
	}
	return hint, fitsDeadline(ctx, hint)
}

// nextDelay puts the retry pieces together for a failed attempt that was
// not throttled, the failures-th of the call: whether to retry, and after
// how long.
func (c *Client) nextDelay(ctx context.Context, err error, failures int, retriedOnce *bool) (time.Duration, bool) {
	class := classify(err)
	if class == noRetry || failures >= c.retry.MaxAttempts || ctx.Err() != nil {
		return 0, false
	}
	if class == retryOnce {
		if *retriedOnce {
			return 0, false
		}
		*retriedOnce = true
		return 0, true
	}
	delay := c.retry.Backoff(failures)
	return delay, fitsDeadline(ctx, delay)
}

func (in DescribeInput) check() error {
	if !ValidRegion(in.RegionID) {
		return fmt.Errorf("invalid region id %q", in.RegionID)
	}
	if in.DesktopID == "" {
		return errors.New("missing desktop id")
	}
	if in.MaxResults < 0 || in.MaxResults > MaxPageSize {
		return fmt.Errorf("MaxResults %d outside 0..%d", in.MaxResults, MaxPageSize)
	}
	return nil
}

// ValidRegion reports whether r is an Alibaba Cloud region id such as
// cn-hangzhou, ap-southeast-1 or cn-shanghai-finance-1: lower-case letters,
// digits and dashes in that shape, at most 63 bytes. The region becomes one
// DNS label of the endpoint's host name (ecd.<region>.aliyuncs.com), so
// nothing else may reach it. The service validates callers' regions with
// the same rule, so a region the client would refuse is the caller's
// InvalidArgument, never an unreachable upstream.
func ValidRegion(r string) bool {
	return len(r) <= 63 && regionPattern.MatchString(r)
}

var regionPattern = regexp.MustCompile(`^[a-z]{2,12}(-[a-z0-9]{1,24}){1,4}$`)

// attempt makes one signed call under its own client span and decodes the
// answer while the span is open, so the span carries what only the body
// tells (the upstream RequestId, the error code, the record count).
func (c *Client) attempt(ctx context.Context, in DescribeInput, attempt int) (*Page, error) {
	ctx, span := c.tracer.Start(ctx, SpanName, clientSpan)
	defer span.End()
	start := time.Now()
	page, status, err := c.roundTrip(ctx, in)
	c.metrics.record(ctx, time.Since(start), err)
	annotateAttempt(span, in, attempt, pageNumberFrom(ctx), status, page, err)
	return page, err
}

// roundTrip signs and sends one request and reads its answer, within the
// attempt timeout. status is the HTTP status, 0 without an answer.
func (c *Client) roundTrip(ctx context.Context, in DescribeInput) (_ *Page, status int, _ error) {
	creds, err := c.credentials.Credentials(ctx)
	if err != nil {
		if !errors.Is(err, ErrNoCredentials) {
			err = fmt.Errorf("%w: %w", ErrNoCredentials, err)
		}
		return nil, 0, err
	}
	if c.attemptTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, c.attemptTimeout, errAttemptTimeout)
		defer cancel()
	}
	req, err := c.newRequest(ctx, in, creds)
	if err != nil {
		return nil, 0, err
	}
	resp, err := c.send(req)
	if err == nil {
		var page *Page
		page, err = readAnswer(resp, c.maxResponseBytes)
		resp.Body.Close()
		if err == nil || !isNetworkError(err) {
			return page, resp.StatusCode, err
		}
		status = resp.StatusCode
	}
	if context.Cause(ctx) == errAttemptTimeout {
		return nil, status, &networkError{err: fmt.Errorf("%w after %v", errAttemptTimeout, c.attemptTimeout)}
	}
	if _, ok := errors.AsType[*networkError](err); ok {
		return nil, status, err
	}
	if regionErr := c.unknownRegion(in.RegionID, err); regionErr != nil {
		return nil, status, regionErr // not a networkError: never retried
	}
	return nil, status, &networkError{err: err}
}

// send sends req with the client's transport and returns its answer, or
// an error that names the method and host as http.Client's does, but not
// the URL, which may carry request parameters.
//
// It is what http.Client.Do does for the client: a signed request is
// never redirected (a redirect is the answer, and is no page), no cookie
// is sent, and the endpoint's user, if any, becomes Basic authorization
// where the signature is not in the Authorization header (V1). Do would
// also copy every request's header map, for redirects the client never
// follows. No trace context is sent: the upstream is a third party.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	if u := req.URL.User; u != nil && req.Header.Get("Authorization") == "" {
		password, _ := u.Password()
		req.SetBasicAuth(u.Username(), password)
	}
	resp, err := c.transport.RoundTrip(req)
	switch {
	case err != nil:
		return nil, fmt.Errorf("Post %s: %w", req.URL.Host, err)
	case resp == nil:
		return nil, fmt.Errorf("Post %s: the transport returned no answer and no error", req.URL.Host)
	}
	return resp, nil
}

func isNetworkError(err error) bool {
	_, ok := errors.AsType[*networkError](err)
	return ok
}

// networkError marks a failure to get an answer at all; it is retried.
type networkError struct{ err error }

func (e *networkError) Error() string { return "calling upstream: " + e.err.Error() }
func (e *networkError) Unwrap() error { return e.err }

func (c *Client) newRequest(ctx context.Context, in DescribeInput, creds Credentials) (*http.Request, error) {
	// The parameters' values share one array.
	values := make([]string, 0, 4)
	params := make(url.Values, 4)
	param := func(name, value string) {
		values = append(values, value)
		params[name] = values[len(values)-1 : len(values) : len(values)]
	}
	param("RegionId", in.RegionID)
	param("DesktopId", in.DesktopID)
	if in.MaxResults > 0 {
		param("MaxResults", strconv.Itoa(in.MaxResults))
	}
	if in.NextToken != "" {
		param("NextToken", in.NextToken)
	}
	target, err := c.requestURL(in.RegionID)
	if err != nil {
		return nil, err
	}
	call := acs.Call{Action: Action, Version: APIVersion, Params: params, Timestamp: c.now(), Nonce: newNonce()}
	signing := acs.Credentials(creds)
	// Room for the signed headers and Accept, exactly: a map made for more
	// than eight entries costs two more allocations.
	size := 7 // six signed headers and Accept
	switch {
	case c.signature == SignatureV1:
		size = 2 // Accept and Content-Type
	case creds.SecurityToken != "":
		size = 9 // and the STS key's two
	}
	header := make(http.Header, size)
	header["Accept"] = acceptJSON
	var req *http.Request
	switch c.signature {
	case SignatureV1:
		// The parameters go in a form body, not the query string as the
		// official SDK does, so that the AccessKeyId, the STS token and the
		// signature never appear in a URL (in traces, proxy logs, errors).
		body := call.SignV1(http.MethodPost, signing)
		header["Content-Type"] = formContentType
		if req, err = http.NewRequestWithContext(ctx, http.MethodPost, target, strings.NewReader(body)); err != nil {
			return nil, fmt.Errorf("building upstream request: %w", err)
		}
	default:
		if req, err = http.NewRequestWithContext(ctx, http.MethodPost, target, http.NoBody); err != nil {
			return nil, fmt.Errorf("building upstream request: %w", err)
		}
		req.URL.RawQuery = call.SignV3Into(header, req.URL.Host, signing)
	}
	req.Header = header
	return req, nil
}

// The values of the headers the client sets besides the signed ones. They
// are shared by every request: net/http reads header values and never
// writes them.
var (
	acceptJSON      = []string{"application/json"}
	formContentType = []string{"application/x-www-form-urlencoded"}
)

// requestURL returns the URL a request for region goes to, before its
// query: the endpoint with the path /.
func (c *Client) requestURL(region string) (string, error) {
	if c.endpoint == "" {
		return "https://ecd." + region + ".aliyuncs.com/", nil
	}
	if c.endpointURL == "" {
		return "", fmt.Errorf("invalid upstream endpoint %q", c.endpoint)
	}
	return c.endpointURL, nil
}

// endpointRequestURL is what requestURL returns for every request to the
// endpoint base ("" for an invalid one): base with the path /, parsed
// once.
func endpointRequestURL(base string) string {
	u, err := url.Parse(base)
	if err != nil || u.Host == "" {
		return ""
	}
	u.Path, u.RawPath = "/", ""
	return u.String()
}

func newNonce() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand docs)
	return hex.EncodeToString(b[:])
}
