package ecdsim_test

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/imagerecords/imagerecords/upstream/acs"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// ---- signing helper -------------------------------------------------------

const (
	testHost   = "ecd.cn-hangzhou.aliyuncs.com"
	formType   = "application/x-www-form-urlencoded"
	testAction = "DescribeImageModifiedRecords"
	testVer    = "2020-09-30"
)

var (
	fixedNow = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	longKey  = ecdsim.Key{AccessKeyID: "LTAItestkey000000001", AccessKeySecret: "test-secret-0001"}
	stsKey   = ecdsim.Key{AccessKeyID: "STS.testkey000000002", AccessKeySecret: "test-secret-0002", SecurityToken: "CAIS+sts/token=镜像 1"}
	nonceSeq atomic.Int64
)

func newNonce() string { return "nonce-" + strconv.FormatInt(nonceSeq.Add(1), 10) }

// call describes one request; its zero value (plus key and params) is a
// valid V3 POST with every parameter in the query string, the way the
// official SDK sends it.
type call struct {
	v1      bool
	method  string     // default POST
	params  url.Values // the business parameters
	key     ecdsim.Key // whose id and secret sign the request
	secret  string     // signs instead of key.AccessKeySecret
	token   string     // security token instead of key.SecurityToken
	noToken bool       // send no security token
	ts      time.Time  // default fixedNow
	nonce   string     // default a fresh one
	form    bool       // parameters in an x-www-form-urlencoded body
	action  string     // default DescribeImageModifiedRecords
	version string     // default 2020-09-30
	// V3 only: a header that is sent but left out of SignedHeaders, and a
	// body sent instead of the signed one.
	unsigned string
	tamper   string
}

func (c call) request(t testing.TB) *http.Request {
	t.Helper()
	method := cmp.Or(c.method, http.MethodPost)
	secret := cmp.Or(c.secret, c.key.AccessKeySecret)
	token := cmp.Or(c.token, c.key.SecurityToken)
	if c.noToken {
		token = ""
	}
	ts := c.ts
	if ts.IsZero() {
		ts = fixedNow
	}
	date := ts.UTC().Format("2006-01-02T15:04:05Z")
	nonce := cmp.Or(c.nonce, newNonce())
	act := cmp.Or(c.action, testAction)
	ver := cmp.Or(c.version, testVer)
	params := maps.Clone(c.params)
	if params == nil {
		params = url.Values{}
	}

	var query url.Values
	var body string
	header := http.Header{}
	if c.v1 {
		params.Set("Format", "JSON")
		params.Set("AccessKeyId", c.key.AccessKeyID)
		params.Set("SignatureMethod", "HMAC-SHA1")
		params.Set("SignatureVersion", "1.0")
		params.Set("SignatureNonce", nonce)
		params.Set("Timestamp", date)
		params.Set("Action", act)
		params.Set("Version", ver)
		if token != "" {
			params.Set("SecurityToken", token)
		}
		params.Set("Signature", acs.V1Signature(secret, method, params))
		if c.form {
			body = acs.CanonicalQuery(params)
			header.Set("Content-Type", formType)
		} else {
			query = params
		}
	} else {
		if c.form {
			body = acs.CanonicalQuery(params)
		} else {
			query = params
		}
		hashed := acs.EmptyPayloadHash
		if body != "" {
			sum := sha256.Sum256([]byte(body))
			hashed = hex.EncodeToString(sum[:])
		}
		header.Set("x-acs-action", act)
		header.Set("x-acs-version", ver)
		header.Set("x-acs-date", date)
		header.Set("x-acs-signature-nonce", nonce)
		header.Set("x-acs-content-sha256", hashed)
		if token != "" {
			header.Set("x-acs-security-token", token)
		}
		if c.form {
			header.Set("content-type", formType)
		}
		signed := header.Clone()
		signed.Del(c.unsigned)
		host := testHost
		if c.unsigned == "host" {
			host = ""
		}
		sig, signedHeaders := acs.V3Request{
			Method:        method,
			Host:          host,
			Query:         query,
			Header:        signed,
			HashedPayload: hashed,
		}.Signature(secret)
		header.Set("Authorization", acs.V3Authorization(c.key.AccessKeyID, signedHeaders, sig))
		if c.tamper != "" {
			body = c.tamper
		}
	}
	target := "http://" + testHost + "/"
	if len(query) > 0 {
		target += "?" + acs.CanonicalQuery(query)
	}
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	maps.Copy(r.Header, header)
	return r
}

// ---- responses ----------------------------------------------------------------

type page struct {
	RequestID            string `json:"RequestId"`
	TotalCount           int
	NextToken            *string
	ImageModifiedRecords []ecdsim.Record
}

func (p page) next() string {
	if p.NextToken == nil {
		return ""
	}
	return *p.NextToken
}

type apiError struct {
	RequestID string `json:"RequestId"`
	HostID    string `json:"HostId"`
	Code      string
	Message   string
	Recommend string
}

func serve(sim http.Handler, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	sim.ServeHTTP(w, r)
	return w
}

func decodeStrict(t testing.TB, body []byte, v any) {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(body))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		t.Fatalf("decoding %s: %v", body, err)
	}
}

// mustPage sends c and decodes the 200 answer.
func mustPage(t testing.TB, sim http.Handler, c call) page {
	t.Helper()
	w := serve(sim, c.request(t))
	if w.Code != http.StatusOK {
		t.Fatalf("status %d, want 200; body %s", w.Code, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q", ct)
	}
	var p page
	decodeStrict(t, w.Body.Bytes(), &p)
	if p.ImageModifiedRecords == nil {
		t.Errorf("ImageModifiedRecords is missing or null in %s", w.Body)
	}
	return p
}

// mustFail sends c and checks the error answer.
func mustFail(t testing.TB, sim http.Handler, r *http.Request, status int, code string) apiError {
	t.Helper()
	w := serve(sim, r)
	var e apiError
	decodeStrict(t, w.Body.Bytes(), &e)
	if w.Code != status || e.Code != code {
		t.Fatalf("got %d %s (%s), want %d %s", w.Code, e.Code, e.Message, status, code)
	}
	if e.RequestID == "" || e.HostID != testHost || e.Message == "" ||
		e.Recommend != "https://api.aliyun.com/troubleshoot?q="+code+"&product=ecd" {
		t.Errorf("incomplete error body %s", w.Body)
	}
	if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q", ct)
	}
	return e
}

func newSim(t testing.TB, cfg ecdsim.Config) *ecdsim.Simulator {
	t.Helper()
	if cfg.Keys == nil {
		cfg.Keys = []ecdsim.Key{longKey, stsKey}
	}
	if cfg.Now == nil {
		cfg.Now = func() time.Time { return fixedNow }
	}
	sim, err := ecdsim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return sim
}

// desktopWith returns the id of the default desktop with n records.
func desktopWith(t testing.TB, sim *ecdsim.Simulator, n int) string {
	t.Helper()
	for _, d := range sim.Desktops() {
		if d.Records == n {
			return d.ID
		}
	}
	t.Fatalf("no desktop with %d records", n)
	return ""
}

func params(desktopID string, kv ...string) url.Values {
	v := url.Values{"RegionId": {"cn-hangzhou"}, "DesktopId": {desktopID}}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Set(kv[i], kv[i+1])
	}
	return v
}

func checkRecords(t testing.TB, sim *ecdsim.Simulator, id string, from int, got []ecdsim.Record) {
	t.Helper()
	for k, rec := range got {
		want, ok := sim.Record(id, from+k)
		if !ok || rec != want {
			t.Fatalf("record %d = %+v, want %+v (ok %v)", from+k, rec, want, ok)
		}
	}
}

// ---- tests ----------------------------------------------------------------------

func TestFirstPage(t *testing.T) {
	t.Parallel()
	sim := newSim(t, ecdsim.Config{Seed: 7})
	id := desktopWith(t, sim, 1234)
	testCases := []struct {
		name       string
		maxResults string
		want       int
	}{
		{"default", "", 10},
		{"MaxResults=1", "1", 1},
		{"MaxResults=100", "100", 100},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := params(id)
			if tc.maxResults != "" {
				p.Set("MaxResults", tc.maxResults)
			}
			pg := mustPage(t, sim, call{key: longKey, params: p})
			if len(pg.ImageModifiedRecords) != tc.want || pg.TotalCount != 1234 || pg.next() == "" {
				t.Fatalf("got %d records, TotalCount %d, NextToken %q", len(pg.ImageModifiedRecords), pg.TotalCount, pg.next())
			}
			checkRecords(t, sim, id, 0, pg.ImageModifiedRecords)
		})
	}
}

func TestPageThrough(t *testing.T) {
	t.Parallel()
	sim := newSim(t, ecdsim.Config{Seed: 7})
	testCases := []struct {
		records, maxResults, pages int
	}{
		{1234, 100, 13},
		{250, 100, 3},
		{101, 100, 2},
		{100, 100, 1},
		{100, 10, 10},
		{42, 0, 5}, // MaxResults absent: 10
		{7, 3, 3},
		{1, 100, 1},
		{0, 100, 1},
	}
	for _, tc := range testCases {
		t.Run(fmt.Sprintf("%d_by_%d", tc.records, tc.maxResults), func(t *testing.T) {
			t.Parallel()
			id := desktopWith(t, sim, tc.records)
			seen := make(map[ecdsim.Record]bool)
			token := ""
			pages := 0
			for {
				p := params(id)
				if tc.maxResults > 0 {
					p.Set("MaxResults", strconv.Itoa(tc.maxResults))
				}
				if token != "" {
					p.Set("NextToken", token)
				}
				pg := mustPage(t, sim, call{key: longKey, params: p})
				pages++
				if pg.TotalCount != tc.records {
					t.Fatalf("TotalCount %d, want %d", pg.TotalCount, tc.records)
				}
				checkRecords(t, sim, id, len(seen), pg.ImageModifiedRecords)
				for _, r := range pg.ImageModifiedRecords {
					if seen[r] {
						t.Fatalf("record %+v repeated", r)
					}
					seen[r] = true
				}
				if pg.NextToken == nil {
					break
				}
				if *pg.NextToken == "" || *pg.NextToken == token {
					t.Fatalf("NextToken %q after %q", *pg.NextToken, token)
				}
				token = *pg.NextToken
				if pages > tc.pages {
					t.Fatalf("more than %d pages", tc.pages)
				}
			}
			if pages != tc.pages || len(seen) != tc.records {
				t.Fatalf("%d pages, %d records; want %d pages, %d records", pages, len(seen), tc.pages, tc.records)
			}
		})
	}
}

func TestTokenOffsetWinsOverMaxResults(t *testing.T) {
	t.Parallel()
	sim := newSim(t, ecdsim.Config{Seed: 3})
	id := desktopWith(t, sim, 250)
	first := mustPage(t, sim, call{key: longKey, params: params(id, "MaxResults", "7")})
	p := mustPage(t, sim, call{key: longKey, params: params(id, "MaxResults", "100", "NextToken", first.next())})
	if len(p.ImageModifiedRecords) != 100 {
		t.Fatalf("%d records", len(p.ImageModifiedRecords))
	}
	checkRecords(t, sim, id, 7, p.ImageModifiedRecords)
}

func TestSignatureVariantsAccepted(t *testing.T) {
	t.Parallel()
	sim := newSim(t, ecdsim.Config{Seed: 1})
	id := desktopWith(t, sim, 42)
	testCases := []struct {
		name string
		c    call
	}{
		{"V3 POST query", call{}},
		{"V3 GET query", call{method: http.MethodGet}},
		{"V3 POST form body", call{form: true}},
		{"V1 GET", call{v1: true, method: http.MethodGet}},
		{"V1 POST query", call{v1: true}},
		{"V1 POST form body", call{v1: true, form: true}},
		{"V3 STS", call{key: stsKey}},
		{"V1 STS", call{v1: true, key: stsKey}},
		{"V1 STS form body", call{v1: true, key: stsKey, form: true}},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := tc.c
			if c.key == (ecdsim.Key{}) {
				c.key = longKey
			}
			c.params = params(id, "MaxResults", "5")
			p := mustPage(t, sim, c)
			if len(p.ImageModifiedRecords) != 5 {
				t.Fatalf("%d records", len(p.ImageModifiedRecords))
			}
			checkRecords(t, sim, id, 0, p.ImageModifiedRecords)
		})
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	other := ecdsim.Desktop{ID: "ecd-other", Records: 30}
	desktops := append(ecdsim.DefaultDesktops(5), other)
	sim := newSim(t, ecdsim.Config{Seed: 5, Desktops: desktops})
	id := desktopWith(t, sim, 1234)
	token := mustPage(t, sim, call{key: longKey, params: params(id)}).next()
	otherToken := mustPage(t, sim, call{key: longKey, params: params(other.ID)}).next()
	tampered := []byte(token)
	tampered[10] ^= 1 // still base64, wrong MAC
	withParams := func(c call, p url.Values) call { c.params = p; return c }
	v3 := call{key: longKey, params: params(id)}
	v1 := call{v1: true, key: longKey, params: params(id)}

	testCases := []struct {
		name   string
		c      call
		status int
		code   string
	}{
		{"V3 wrong secret", call{key: longKey, secret: "wrong", params: params(id)}, 400, "SignatureDoesNotMatch"},
		{"V1 wrong secret", call{v1: true, key: longKey, secret: "wrong", params: params(id)}, 400, "SignatureDoesNotMatch"},
		{"V3 unknown key", call{key: ecdsim.Key{AccessKeyID: "LTAIunknown", AccessKeySecret: "x"}, params: params(id)}, 404, "InvalidAccessKeyId.NotFound"},
		{"V1 unknown key", call{v1: true, key: ecdsim.Key{AccessKeyID: "LTAIunknown", AccessKeySecret: "x"}, params: params(id)}, 404, "InvalidAccessKeyId.NotFound"},
		{"V3 16 minutes old", call{key: longKey, ts: fixedNow.Add(-16 * time.Minute), params: params(id)}, 400, "InvalidTimeStamp.Expired"},
		{"V3 16 minutes ahead", call{key: longKey, ts: fixedNow.Add(16 * time.Minute), params: params(id)}, 400, "InvalidTimeStamp.Expired"},
		{"V1 16 minutes old", call{v1: true, key: longKey, ts: fixedNow.Add(-16 * time.Minute), params: params(id)}, 400, "InvalidTimeStamp.Expired"},
		{"V3 STS without token", call{key: stsKey, noToken: true, params: params(id)}, 400, "InvalidSecurityToken.Malformed"},
		{"V3 STS wrong token", call{key: stsKey, token: "wrong", params: params(id)}, 400, "InvalidSecurityToken.Malformed"},
		{"V1 STS without token", call{v1: true, key: stsKey, noToken: true, params: params(id)}, 400, "InvalidSecurityToken.Malformed"},
		{"V1 STS wrong token", call{v1: true, key: stsKey, token: "wrong", params: params(id)}, 400, "InvalidSecurityToken.Malformed"},
		{"V3 long-term key with token", call{key: longKey, token: "tok", params: params(id)}, 400, "InvalidSecurityToken.Malformed"},
		{"V3 nonce not signed", call{key: longKey, unsigned: "x-acs-signature-nonce", params: params(id)}, 400, "IncompleteSignature"},
		{"V3 host not signed", call{key: longKey, unsigned: "host", params: params(id)}, 400, "IncompleteSignature"},
		{"V3 STS token not signed", call{key: stsKey, unsigned: "x-acs-security-token", params: params(id)}, 400, "IncompleteSignature"},
		{"V3 body does not match hash", call{key: longKey, form: true, tamper: "RegionId=cn-hangzhou&DesktopId=x", params: params(id)}, 400, "SignatureDoesNotMatch"},
		{"V3 wrong action", call{key: longKey, action: "DescribeDesktops", params: params(id)}, 404, "InvalidAction.NotFound"},
		{"V1 wrong action", call{v1: true, key: longKey, action: "DescribeDesktops", params: params(id)}, 404, "InvalidAction.NotFound"},
		{"V3 wrong version", call{key: longKey, version: "2014-05-26", params: params(id)}, 400, "InvalidVersion"},
		{"V1 wrong version", call{v1: true, key: longKey, version: "2014-05-26", params: params(id)}, 400, "InvalidVersion"},
		{"missing RegionId", withParams(v3, url.Values{"DesktopId": {id}}), 400, "MissingRegionId"},
		{"missing DesktopId", withParams(v3, url.Values{"RegionId": {"cn-hangzhou"}}), 400, "MissingDesktopId"},
		{"V3 MaxResults 0", withParams(v3, params(id, "MaxResults", "0")), 400, "InvalidParameter"},
		{"V3 MaxResults 101", withParams(v3, params(id, "MaxResults", "101")), 400, "InvalidParameter"},
		{"V1 MaxResults 101", withParams(v1, params(id, "MaxResults", "101")), 400, "InvalidParameter"},
		{"MaxResults not a number", withParams(v3, params(id, "MaxResults", "ten")), 400, "InvalidParameter"},
		{"unknown desktop", withParams(v3, params("ecd-doesnotexist00")), 400, "InvalidDesktopId.NotFound"},
		{"junk NextToken", withParams(v3, params(id, "NextToken", "junk")), 400, "InvalidParameter.NextToken"},
		{"NextToken not base64", withParams(v3, params(id, "NextToken", "!!!!+/+/AAAAAAAAAAAAAAAAAA==")), 400, "InvalidParameter.NextToken"},
		{"NextToken with wrong MAC", withParams(v3, params(id, "NextToken", string(tampered))), 400, "InvalidParameter.NextToken"},
		{"NextToken of another desktop", withParams(v3, params(id, "NextToken", otherToken)), 400, "InvalidParameter.NextToken"},
		{"NextToken with + decoded as space", withParams(v1, params(id, "NextToken", strings.ReplaceAll(token, "+", " "))), 400, "InvalidParameter.NextToken"},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := mustFail(t, sim, tc.c.request(t), tc.status, tc.code)
			for _, secret := range []string{longKey.AccessKeySecret, stsKey.AccessKeySecret, stsKey.SecurityToken} {
				if strings.Contains(e.Message, secret) {
					t.Errorf("message %q reveals a secret", e.Message)
				}
			}
			if tc.code == "InvalidParameter" && !strings.Contains(e.Message, "MaxResults") {
				t.Errorf("message %q does not name MaxResults", e.Message)
			}
		})
	}

	t.Run("no signature", func(t *testing.T) {
		t.Parallel()
		r := httptest.NewRequest(http.MethodPost, "http://"+testHost+"/?"+acs.CanonicalQuery(params(id)), nil)
		mustFail(t, sim, r, 400, "IncompleteSignature")
	})
	t.Run("malformed Authorization", func(t *testing.T) {
		t.Parallel()
		r := v3.request(t)
		r.Header.Set("Authorization", acs.V3Algorithm+" Credential="+longKey.AccessKeyID)
		mustFail(t, sim, r, 400, "IncompleteSignature")
	})
	t.Run("unparseable timestamp", func(t *testing.T) {
		t.Parallel()
		r := v3.request(t)
		r.Header.Set("x-acs-date", "yesterday") // checked before the signature
		mustFail(t, sim, r, 400, "InvalidTimeStamp.Format")
	})
	t.Run("PUT", func(t *testing.T) {
		t.Parallel()
		r := v3.request(t)
		r.Method = http.MethodPut
		w := serve(sim, r)
		if w.Code != http.StatusMethodNotAllowed || !json.Valid(w.Body.Bytes()) || w.Header().Get("Allow") == "" {
			t.Fatalf("PUT: %d %s", w.Code, w.Body)
		}
	})
}

func TestNonceReuse(t *testing.T) {
	t.Parallel()
	sim := newSim(t, ecdsim.Config{Seed: 2})
	id := desktopWith(t, sim, 7)
	for _, v1 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v1=%v", v1), func(t *testing.T) {
			t.Parallel()
			c := call{v1: v1, key: longKey, params: params(id), nonce: newNonce()}
			mustPage(t, sim, c)
			mustFail(t, sim, c.request(t), 400, "SignatureNonceUsed")
			// The same nonce under another key is a different nonce.
			c.key = stsKey
			mustPage(t, sim, c)
		})
	}
	t.Run("failed request does not burn its nonce", func(t *testing.T) {
		t.Parallel()
		c := call{key: longKey, params: params(id), nonce: newNonce(), secret: "wrong"}
		mustFail(t, sim, c.request(t), 400, "SignatureDoesNotMatch")
		c.secret = ""
		mustPage(t, sim, c)
	})
}

func TestTokensNeedEncoding(t *testing.T) {
	t.Parallel()
	sim := newSim(t, ecdsim.Config{Seed: 11})
	for _, d := range sim.Desktops() {
		token := ""
		for {
			p := params(d.ID, "MaxResults", "13")
			if token != "" {
				p.Set("NextToken", token)
			}
			pg := mustPage(t, sim, call{key: longKey, params: p})
			if pg.next() == "" {
				break
			}
			token = pg.next()
			if !strings.Contains(token, "+") || !strings.Contains(token, "/") || !strings.Contains(token, "=") {
				t.Fatalf("token %q lacks one of + / =", token)
			}
		}
	}
}

func TestStuckToken(t *testing.T) {
	t.Parallel()
	stuck := ecdsim.Desktop{ID: "ecd-stuck", Records: 250, StuckToken: true}
	tiny := ecdsim.Desktop{ID: "ecd-stuck-tiny", Records: 3, StuckToken: true}
	sim := newSim(t, ecdsim.Config{Seed: 4, Desktops: []ecdsim.Desktop{stuck, tiny}})
	for _, d := range []ecdsim.Desktop{stuck, tiny} {
		first := mustPage(t, sim, call{key: longKey, params: params(d.ID)})
		token := first.next()
		if token == "" {
			t.Fatalf("%s: first page has no NextToken", d.ID)
		}
		for range 5 {
			pg := mustPage(t, sim, call{key: longKey, params: params(d.ID, "NextToken", token)})
			if pg.next() != token {
				t.Fatalf("%s: NextToken %q, want the first page's %q", d.ID, pg.next(), token)
			}
		}
	}
}

func TestInjectedFaults(t *testing.T) {
	t.Parallel()
	sim := newSim(t, ecdsim.Config{Seed: 9, Faults: ecdsim.Faults{ThrottleFraction: 1}})
	id := desktopWith(t, sim, 100)
	ok := call{key: longKey, params: params(id)}

	for range 20 {
		e := mustFail(t, sim, ok.request(t), 400, "Throttling.User")
		if e.Message != "Request was denied due to user flow control." {
			t.Fatalf("message %q", e.Message)
		}
	}
	// Faults apply only after authentication.
	mustFail(t, sim, call{key: longKey, secret: "wrong", params: params(id)}.request(t), 400, "SignatureDoesNotMatch")
	if n := sim.DesktopCalls(id); n != 0 {
		t.Fatalf("throttled requests reached the desktop: %d", n)
	}

	sim.SetFaults(ecdsim.Faults{ServerErrorFraction: 1})
	codes := map[string]int{}
	for range 20 {
		w := serve(sim, ok.request(t))
		var e apiError
		decodeStrict(t, w.Body.Bytes(), &e)
		switch {
		case w.Code == 503 && e.Code == "ServiceUnavailable", w.Code == 500 && e.Code == "InternalError":
			codes[e.Code]++
		default:
			t.Fatalf("got %d %s", w.Code, e.Code)
		}
	}
	if codes["ServiceUnavailable"] != 10 || codes["InternalError"] != 10 {
		t.Fatalf("server errors do not alternate: %v", codes)
	}

	sim.SetFaults(ecdsim.Faults{})
	mustPage(t, sim, ok)

	st := sim.Stats()
	want := ecdsim.Stats{Requests: 42, Pages: 1, Throttled: 20, ServerErrors: 20, AuthFailures: 1}
	if st != want {
		t.Fatalf("stats %+v, want %+v", st, want)
	}
	if n := sim.DesktopCalls(id); n != 1 {
		t.Fatalf("DesktopCalls %d, want 1", n)
	}
}

func TestFaultsAreDeterministic(t *testing.T) {
	t.Parallel()
	outcomes := func(seed int64) string {
		sim := newSim(t, ecdsim.Config{Seed: seed, Faults: ecdsim.Faults{ThrottleFraction: 0.3, ServerErrorFraction: 0.3}})
		id := sim.Desktops()[0].ID
		var b strings.Builder
		for range 200 {
			b.WriteString(strconv.Itoa(serve(sim, call{key: longKey, params: params(id)}.request(t)).Code))
			b.WriteByte(' ')
		}
		return b.String()
	}
	a, b, c := outcomes(1), outcomes(1), outcomes(2)
	if a != b {
		t.Fatal("same seed, different fault decisions")
	}
	if a == c {
		t.Fatal("different seeds, same fault decisions")
	}
	for _, code := range []string{"200", "400", "500", "503"} {
		if !strings.Contains(a, code) {
			t.Errorf("no %s among %s", code, a)
		}
	}
}

func TestLatency(t *testing.T) {
	t.Parallel()
	sim := newSim(t, ecdsim.Config{Seed: 1, Faults: ecdsim.Faults{Latency: time.Hour}})
	id := desktopWith(t, sim, 7)

	t.Run("cancelled request returns at once", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		r := call{key: longKey, params: params(id)}.request(t).WithContext(ctx)
		w := serve(sim, r) // would block for an hour without the context
		if w.Body.Len() != 0 {
			t.Fatalf("wrote %s", w.Body)
		}
	})
	t.Run("short latency is waited for", func(t *testing.T) {
		t.Parallel()
		sim := newSim(t, ecdsim.Config{Seed: 1, Faults: ecdsim.Faults{Latency: 20 * time.Millisecond}})
		start := time.Now()
		mustPage(t, sim, call{key: longKey, params: params(id)})
		if d := time.Since(start); d < 20*time.Millisecond {
			t.Fatalf("answered after %v", d)
		}
	})
}

func TestDeterminism(t *testing.T) {
	t.Parallel()
	if a, b := ecdsim.DefaultDesktops(42), ecdsim.DefaultDesktops(42); fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatal("same seed, different desktops")
	}
	if a, b := ecdsim.DefaultDesktops(42), ecdsim.DefaultDesktops(43); a[0].ID == b[0].ID {
		t.Fatal("different seeds, same desktop ids")
	}
	idRE := regexp.MustCompile(`^ecd-[a-z0-9]{17}$`)
	wantCounts := []int{1234, 250, 101, 100, 42, 7, 1, 0}
	for i, d := range ecdsim.DefaultDesktops(42) {
		if !idRE.MatchString(d.ID) || d.Records != wantCounts[i] || d.StuckToken {
			t.Errorf("desktop %d: %+v", i, d)
		}
	}

	s1 := newSim(t, ecdsim.Config{Seed: 42})
	s2 := newSim(t, ecdsim.Config{Seed: 42})
	s3 := newSim(t, ecdsim.Config{Seed: 43, Desktops: ecdsim.DefaultDesktops(42)})
	id := desktopWith(t, s1, 1234)
	same := 0
	for i := range 1234 {
		r1, _ := s1.Record(id, i)
		r2, _ := s2.Record(id, i)
		r3, _ := s3.Record(id, i)
		if r1 != r2 {
			t.Fatalf("record %d differs for the same seed", i)
		}
		if r1 == r3 {
			same++
		}
	}
	if same > 0 {
		t.Fatalf("%d records equal across seeds", same)
	}
	// Tokens are bound to the seed too.
	tok := mustPage(t, s1, call{key: longKey, params: params(id)}).next()
	if tok2 := mustPage(t, s2, call{key: longKey, params: params(id)}).next(); tok2 != tok {
		t.Fatal("same seed, different tokens")
	}
	mustFail(t, s3, call{key: longKey, params: params(id, "NextToken", tok)}.request(t), 400, "InvalidParameter.NextToken")
}

func TestRecordContent(t *testing.T) {
	t.Parallel()
	sim := newSim(t, ecdsim.Config{Seed: 1})
	imageRE := regexp.MustCompile(`^m-[a-z0-9]{17}$`)
	timeRE := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)
	for _, d := range sim.Desktops() {
		var prev time.Time
		var statuses []int
		type triple struct{ a, b, c string }
		seen := make(map[triple]bool)
		images := make(map[string]bool)
		nonZeroMillis, spaces, nonASCII := 0, 0, 0
		for i := range d.Records {
			r, ok := sim.Record(d.ID, i)
			if !ok {
				t.Fatalf("%s: no record %d", d.ID, i)
			}
			ts, err := time.Parse(time.RFC3339Nano, r.UpdateTime)
			if err != nil || !timeRE.MatchString(r.UpdateTime) {
				t.Fatalf("UpdateTime %q: %v", r.UpdateTime, err)
			}
			if i > 0 && !ts.After(prev) {
				t.Fatalf("%s: UpdateTime %d %v not after %v", d.ID, i, ts, prev)
			}
			prev = ts
			if ts.Nanosecond() != 0 {
				nonZeroMillis++
			}
			if r.Status < 0 || r.Status > 2 {
				t.Fatalf("status %d", r.Status)
			}
			statuses = append(statuses, r.Status)
			if (r.Status == 2) != (r.Reason != "") {
				t.Fatalf("status %d with reason %q", r.Status, r.Reason)
			}
			if !imageRE.MatchString(r.ImageID) || !imageRE.MatchString(r.NewImageID) || r.ImageID == r.NewImageID {
				t.Fatalf("image ids %q %q", r.ImageID, r.NewImageID)
			}
			images[r.ImageID] = true
			k := triple{r.ImageID, r.NewImageID, r.UpdateTime}
			if seen[k] {
				t.Fatalf("record %d repeats %v", i, k)
			}
			seen[k] = true
			for _, name := range []string{r.ImageName, r.NewImageName} {
				if name == "" || !utf8.ValidString(name) {
					t.Fatalf("name %q", name)
				}
				if strings.Contains(name, " ") {
					spaces++
				}
				if len(name) != utf8.RuneCountInString(name) {
					nonASCII++
				}
			}
		}
		if _, ok := sim.Record(d.ID, d.Records); ok {
			t.Fatalf("%s: record past the end", d.ID)
		}
		if d.Records >= 10 {
			for i := 0; i+10 <= len(statuses); i++ {
				var has [3]bool
				for _, s := range statuses[i : i+10] {
					has[s] = true
				}
				if has != [3]bool{true, true, true} {
					t.Fatalf("%s: records %d..%d lack a status: %v", d.ID, i, i+9, statuses[i:i+10])
				}
			}
			if spaces != 2*d.Records || nonASCII != 2*d.Records || nonZeroMillis < d.Records*9/10 || len(images) < d.Records*9/10 {
				t.Fatalf("%s: %d names with spaces, %d non-ASCII, %d non-zero millis, %d distinct images of %d",
					d.ID, spaces, nonASCII, nonZeroMillis, len(images), d.Records)
			}
		}
	}
	if _, ok := sim.Record("ecd-nope", 0); ok {
		t.Fatal("record of an unknown desktop")
	}
}

func TestMillionRecords(t *testing.T) {
	t.Parallel()
	sim := newSim(t, ecdsim.Config{Seed: 1, Desktops: []ecdsim.Desktop{{ID: "ecd-huge", Records: 1_000_000}}})
	p := mustPage(t, sim, call{key: longKey, params: params("ecd-huge", "MaxResults", "100")})
	if p.TotalCount != 1_000_000 || len(p.ImageModifiedRecords) != 100 {
		t.Fatalf("TotalCount %d, %d records", p.TotalCount, len(p.ImageModifiedRecords))
	}
	first, _ := sim.Record("ecd-huge", 999_998)
	last, ok := sim.Record("ecd-huge", 999_999)
	if !ok || last.UpdateTime <= first.UpdateTime {
		t.Fatalf("last records %+v %+v", first, last)
	}
}

func TestConcurrentRequests(t *testing.T) {
	t.Parallel()
	sim := newSim(t, ecdsim.Config{Seed: 8})
	ds := sim.Desktops()
	const n = 1000
	reqs := make([]*http.Request, n)
	for i := range reqs {
		d := ds[i%len(ds)]
		reqs[i] = call{v1: i%3 == 0, key: []ecdsim.Key{longKey, stsKey}[i%2], params: params(d.ID, "MaxResults", "100")}.request(t)
	}
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Go(func() {
			w := serve(sim, r)
			if w.Code != http.StatusOK {
				t.Errorf("status %d: %s", w.Code, w.Body)
				return
			}
			var p page
			if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
				t.Error(err)
				return
			}
			ids[i] = p.RequestID
		})
	}
	wg.Wait()
	seen := make(map[string]bool, n)
	uuidRE := regexp.MustCompile(`^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$`)
	for _, id := range ids {
		if !uuidRE.MatchString(id) || seen[id] {
			t.Fatalf("RequestId %q malformed or repeated", id)
		}
		seen[id] = true
	}
	if st := sim.Stats(); st.Requests != n || st.Pages != n {
		t.Fatalf("stats %+v", st)
	}
	var calls int64
	for _, d := range ds {
		calls += sim.DesktopCalls(d.ID)
	}
	if calls != n {
		t.Fatalf("DesktopCalls sum %d, want %d", calls, n)
	}
}

// TestOverHTTP goes through a real server and client, so Host carries a
// port and the body travels the wire.
func TestOverHTTP(t *testing.T) {
	t.Parallel()
	sim := newSim(t, ecdsim.Config{Seed: 1})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	id := desktopWith(t, sim, 101)
	for _, c := range []call{
		{key: longKey},
		{key: stsKey, form: true},
		{v1: true, key: longKey, method: http.MethodGet},
		{v1: true, key: stsKey, form: true},
	} {
		c.params = params(id, "MaxResults", "100")
		r := c.request(t)
		if !c.v1 {
			// Re-sign for the server's host.
			r = resignV3(t, r, c, host)
		}
		r.URL.Host, r.Host, r.RequestURI = host, host, ""
		resp, err := srv.Client().Do(r)
		if err != nil {
			t.Fatal(err)
		}
		var p page
		err = json.NewDecoder(resp.Body).Decode(&p)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || len(p.ImageModifiedRecords) != 100 || p.next() == "" {
			t.Fatalf("%+v: status %d, %d records, err %v", c, resp.StatusCode, len(p.ImageModifiedRecords), err)
		}
	}
}

// resignV3 signs r again for host, keeping its nonce and date.
func resignV3(t testing.TB, r *http.Request, c call, host string) *http.Request {
	t.Helper()
	sig, names := acs.V3Request{
		Method:        r.Method,
		Host:          host,
		Query:         r.URL.Query(),
		Header:        r.Header,
		HashedPayload: r.Header.Get("x-acs-content-sha256"),
	}.Signature(c.key.AccessKeySecret)
	r.Header.Set("Authorization", acs.V3Authorization(c.key.AccessKeyID, names, sig))
	return r
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name string
		cfg  ecdsim.Config
	}{
		{"no keys", ecdsim.Config{}},
		{"key without secret", ecdsim.Config{Keys: []ecdsim.Key{{AccessKeyID: "a"}}}},
		{"duplicate key", ecdsim.Config{Keys: []ecdsim.Key{longKey, longKey}}},
		{"duplicate desktop", ecdsim.Config{Keys: []ecdsim.Key{longKey}, Desktops: []ecdsim.Desktop{{ID: "a"}, {ID: "a"}}}},
		{"negative records", ecdsim.Config{Keys: []ecdsim.Key{longKey}, Desktops: []ecdsim.Desktop{{ID: "a", Records: -1}}}},
		{"too many records", ecdsim.Config{Keys: []ecdsim.Key{longKey}, Desktops: []ecdsim.Desktop{{ID: "a", Records: ecdsim.MaxRecords + 1}}}},
		{"empty desktop id", ecdsim.Config{Keys: []ecdsim.Key{longKey}, Desktops: []ecdsim.Desktop{{Records: 1}}}},
		{"throttle above 1", ecdsim.Config{Keys: []ecdsim.Key{longKey}, Faults: ecdsim.Faults{ThrottleFraction: 1.5}}},
		{"negative latency", ecdsim.Config{Keys: []ecdsim.Key{longKey}, Faults: ecdsim.Faults{Latency: -1}}},
		{"empty region", ecdsim.Config{Keys: []ecdsim.Key{longKey}, Regions: []string{"cn-hangzhou", ""}}},
		{"upper-case region", ecdsim.Config{Keys: []ecdsim.Key{longKey}, Regions: []string{"CN-HANGZHOU"}}},
		{"negative quota rate", ecdsim.Config{Keys: []ecdsim.Key{longKey}, Quota: ecdsim.Quota{QPS: -1}}},
		{"NaN quota rate", ecdsim.Config{Keys: []ecdsim.Key{longKey}, Quota: ecdsim.Quota{QPS: math.NaN()}}},
		{"negative quota burst", ecdsim.Config{Keys: []ecdsim.Key{longKey}, Quota: ecdsim.Quota{QPS: 1, Burst: -1}}},
		{"negative live interval", ecdsim.Config{Keys: []ecdsim.Key{longKey}, Live: ecdsim.Live{Every: -time.Second}}},
		{"negative live duration", ecdsim.Config{Keys: []ecdsim.Key{longKey}, Live: ecdsim.Live{InProgress: -time.Second}}},
		{"live fail fraction above 1", ecdsim.Config{Keys: []ecdsim.Key{longKey}, Live: ecdsim.Live{FailFraction: 1.5}}},
		{"unknown order", ecdsim.Config{Keys: []ecdsim.Key{longKey}, Order: ecdsim.Order(2)}},
	}
	for _, tc := range testCases {
		if _, err := ecdsim.New(tc.cfg); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
}

func BenchmarkServeHTTP(b *testing.B) {
	sim := newSim(b, ecdsim.Config{Seed: 1})
	id := desktopWith(b, sim, 1234)
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("V3_%d_records", n), func(b *testing.B) {
			b.ReportAllocs()
			c := call{key: longKey, params: params(id, "MaxResults", strconv.Itoa(n))}
			for b.Loop() {
				w := serve(sim, c.request(b))
				if w.Code != http.StatusOK {
					b.Fatal(w.Body)
				}
			}
		})
	}
}
