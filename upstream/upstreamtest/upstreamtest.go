// Package upstreamtest is a fake ECD endpoint for tests: a real loopback
// HTTP server that answers from a script (page bodies by NextToken, or
// answers in order, including broken connections), records what it was
// asked, and builders for the bodies it answers with. Use the simulator
// (package ecdsim) for a well-behaved upstream; use this for a misbehaving
// one.
package upstreamtest

import (
	"cmp"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// Answer is one scripted answer.
type Answer struct {
	// Status is the HTTP status; 0 means 200.
	Status int
	Body   string
	Header http.Header
	// Drop closes the connection without an answer.
	Drop bool
	// CutBody announces a 200 with a longer body than it sends, then
	// closes the connection.
	CutBody bool
}

// OK answers 200 with body.
func OK(body string) Answer { return Answer{Status: http.StatusOK, Body: body} }

// Fail answers status with the upstream error JSON of code.
func Fail(status int, code string) Answer { return Answer{Status: status, Body: ErrorBody(code)} }

// Request is what the fake upstream saw of one request. V1 parameters are
// read from the query string or the form body.
type Request struct {
	Token      string // NextToken
	MaxResults string
	// Nonce and Date are the signature nonce and date of either version.
	Nonce, Date string
	// AccessKeyID and Signature come from the V3 Authorization header or
	// the V1 parameters.
	AccessKeyID, Signature string
}

// Upstream is a fake ECD endpoint serving a script on a loopback port.
type Upstream struct {
	// URL is the base URL to point a client at.
	URL    string
	t      testing.TB
	answer func(n int, r Request) Answer
	front  atomic.Pointer[http.Handler] // what the server runs: u, or a wrapper of it
	mu     sync.Mutex
	seen   []Request
}

// ByToken starts an upstream that answers every request with the 200 body
// scripted for its NextToken ("" for the first page). A token without a
// script fails t and is answered 400 InvalidParameter.NextToken, so the
// client stops.
func ByToken(t testing.TB, bodies map[string]string) *Upstream {
	return start(t, func(_ int, r Request) Answer {
		body, ok := bodies[r.Token]
		if !ok {
			t.Errorf("the client asked for token %q, which the script does not have", r.Token)
			return Fail(http.StatusBadRequest, "InvalidParameter.NextToken")
		}
		return OK(body)
	})
}

// InOrder starts an upstream that answers the n-th request with
// answers[n], and every request past the last with the last one.
func InOrder(t testing.TB, answers ...Answer) *Upstream {
	if len(answers) == 0 {
		t.Fatal("upstreamtest.InOrder needs at least one answer")
	}
	return start(t, func(n int, _ Request) Answer { return answers[min(n, len(answers)-1)] })
}

func start(t testing.TB, answer func(int, Request) Answer) *Upstream {
	t.Helper()
	u := &Upstream{t: t, answer: answer}
	var h http.Handler = u
	u.front.Store(&h)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		(*u.front.Load()).ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	u.URL = srv.URL
	return u
}

// Wrap makes the server run wrap(u) instead of u from now on, so a test
// can observe or delay the scripted answers.
func (u *Upstream) Wrap(wrap func(http.Handler) http.Handler) {
	h := wrap(u)
	u.front.Store(&h)
}

// ServeHTTP answers one request from the script.
func (u *Upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil { // V1 parameters may come in a form body
		http.Error(w, "bad form: "+err.Error(), http.StatusTeapot)
		return
	}
	req := Request{
		Token:       r.Form.Get("NextToken"),
		MaxResults:  r.Form.Get("MaxResults"),
		Nonce:       r.Header.Get("x-acs-signature-nonce"),
		Date:        r.Header.Get("x-acs-date"),
		AccessKeyID: r.Form.Get("AccessKeyId"),
		Signature:   r.Form.Get("Signature"),
	}
	if req.Nonce == "" { // V1
		req.Nonce, req.Date = r.Form.Get("SignatureNonce"), r.Form.Get("Timestamp")
	}
	if authz, ok := strings.CutPrefix(r.Header.Get("Authorization"), "ACS3-HMAC-SHA256 "); ok { // V3
		for part := range strings.SplitSeq(authz, ",") {
			switch k, v, _ := strings.Cut(part, "="); k {
			case "Credential":
				req.AccessKeyID = v
			case "Signature":
				req.Signature = v
			}
		}
	}
	u.mu.Lock()
	n := len(u.seen)
	u.seen = append(u.seen, req)
	u.mu.Unlock()

	a := u.answer(n, req)
	if a.Drop || a.CutBody {
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			http.Error(w, "hijack: "+err.Error(), http.StatusTeapot)
			return
		}
		if a.CutBody {
			body := a.Body
			if body == "" {
				body = OKBody
			}
			_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n" + body[:min(20, len(body))])
			_ = buf.Flush()
		}
		_ = conn.Close()
		return
	}
	for k, v := range a.Header {
		w.Header()[k] = v
	}
	if w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "application/json;charset=utf-8")
	}
	w.WriteHeader(cmp.Or(a.Status, http.StatusOK))
	_, _ = io.WriteString(w, a.Body)
}

// Requests are the requests received so far, in order.
func (u *Upstream) Requests() []Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.seen)
}

// Tokens are the NextTokens asked for so far, in order.
func (u *Upstream) Tokens() []string {
	var out []string
	for _, r := range u.Requests() {
		out = append(out, r.Token)
	}
	return out
}

// OKBody is a valid one-record last page.
const OKBody = `{"RequestId":"R-OK","TotalCount":1,"ImageModifiedRecords":[{"Status":1,"UpdateTime":"2022-03-03T02:43:44.851Z","ImageId":"m-1","ImageName":"镜像 1","NewImageId":"m-2","NewImageName":"镜像 2"}]}`

// ErrorBody is the upstream's error JSON for code.
func ErrorBody(code string) string {
	return fmt.Sprintf(`{"RequestId":"REQ-%[1]s","HostId":"ecd.cn-hangzhou.aliyuncs.com","Code":%[1]q,"Message":"scripted %[1]s","Recommend":"https://api.aliyun.com/troubleshoot?q=%[1]s"}`, code)
}

// Page is a page body with the given records, raw JSON objects; next ""
// leaves NextToken out (the last page).
func Page(requestID string, total int, next string, records ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `{"RequestId":%q,"TotalCount":%d`, requestID, total)
	if next != "" {
		fmt.Fprintf(&b, `,"NextToken":%q`, next)
	}
	b.WriteString(`,"ImageModifiedRecords":[` + strings.Join(records, ",") + `]}`)
	return b.String()
}

// Record is a valid succeeded record with the given image id.
func Record(imageID string) string {
	return RecordWith("ImageId", strconv.Quote(imageID))
}

// RecordWith is a valid record whose fields are replaced by raw JSON, given
// as field name and value pairs; an empty value removes the field.
func RecordWith(fieldValues ...string) string {
	fields := []struct{ k, v string }{
		{"Status", `1`}, {"UpdateTime", `"2022-03-03T02:43:44.851Z"`}, {"ImageId", `"m-1"`},
		{"ImageName", `"a"`}, {"NewImageId", `"m-2"`}, {"NewImageName", `"b"`}, {"Reason", `""`},
	}
	var parts []string
	for _, f := range fields {
		v := f.v
		for i := 0; i+1 < len(fieldValues); i += 2 {
			if fieldValues[i] == f.k {
				v = fieldValues[i+1]
			}
		}
		if v != "" {
			parts = append(parts, strconv.Quote(f.k)+":"+v)
		}
	}
	return "{" + strings.Join(parts, ",") + "}"
}
