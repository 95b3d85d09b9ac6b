package upstream

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sync"
)

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
