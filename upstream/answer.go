package upstream

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// answer is one attempt's request facts and decoded response. The client
// puts it in the request context; answerTransport fills it in.
type answer struct {
	in      DescribeInput
	attempt int
	page    int // 1-based page of a Pages sequence; 0 when unknown

	result *Page
	err    error
}

type answerKey struct{}

// answerTransport is the innermost transport: it reads and decodes the
// response while the attempt's client span is still open, so the span
// carries what only the body tells (the upstream RequestId, the error
// code, the record count), then hands the client an empty body.
type answerTransport struct {
	base     http.RoundTripper
	maxBytes int64
}

func (t *answerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	a, _ := req.Context().Value(answerKey{}).(*answer)
	if a == nil {
		return t.base.RoundTrip(req)
	}
	span := trace.SpanFromContext(req.Context())
	a.annotateRequest(span) // before the call: a failed attempt carries them too
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		span.SetAttributes(attribute.String("ecd.error.code", errorCode(&networkError{err: err})))
		return resp, err
	}
	a.result, a.err = readAnswer(resp, t.maxBytes)
	resp.Body.Close()
	resp.Body = http.NoBody
	a.annotateAnswer(span)
	return resp, nil
}

// bodyBuffers recycles response buffers: the decoders copy what they keep,
// so a buffer is free again once its page is decoded. Buffers that grew past
// a few pages are dropped rather than kept.
var bodyBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

const maxPooledBuffer = 1 << 20

func readAnswer(resp *http.Response, maxBytes int64) (*Page, error) {
	buf := bodyBuffers.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= maxPooledBuffer {
			buf.Reset()
			bodyBuffers.Put(buf)
		}
	}()
	if n := resp.ContentLength; n > 0 && n <= maxBytes {
		buf.Grow(int(n) + bytes.MinRead) // room for the read that sees EOF
	}
	if _, err := buf.ReadFrom(io.LimitReader(resp.Body, maxBytes+1)); err != nil {
		return nil, &networkError{err: fmt.Errorf("reading upstream response: %w", err)}
	}
	body := buf.Bytes()
	if int64(len(body)) > maxBytes {
		return nil, fmt.Errorf("%w: body larger than %d bytes", ErrMalformedResponse, maxBytes)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, parseAPIError(resp, body)
	}
	return decodePage(body)
}

// annotateRequest records what the attempt asked for on its client span.
// Attribute values are ids and codes, never credentials.
func (a *answer) annotateRequest(span trace.Span) {
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(
		attribute.String("ecd.action", Action),
		attribute.String("cloud.region", a.in.RegionID),
		attribute.String("ecd.desktop_id", a.in.DesktopID),
		attribute.Int("ecd.attempt", a.attempt),
	)
	if a.page > 0 {
		span.SetAttributes(attribute.Int("ecd.page", a.page))
	}
}

// annotateAnswer records what the answer said on the attempt's client span.
func (a *answer) annotateAnswer(span trace.Span) {
	if !span.IsRecording() {
		return
	}
	throttled := false
	switch apiErr, isAPIErr := a.err.(*APIError); {
	case a.result != nil:
		span.SetAttributes(
			attribute.String("ecd.request_id", a.result.RequestID),
			attribute.Int("ecd.page.records", len(a.result.Records)))
	case isAPIErr:
		throttled = apiErr.Kind() == KindThrottled
		span.SetAttributes(attribute.String("ecd.request_id", apiErr.RequestID))
	}
	if a.err != nil {
		span.SetAttributes(attribute.String("ecd.error.code", errorCode(a.err)))
	}
	span.SetAttributes(attribute.Bool("ecd.throttled", throttled))
}
