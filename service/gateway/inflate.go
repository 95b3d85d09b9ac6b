package gateway

import (
	"compress/gzip"
	"fmt"
	"io"

	"connectrpc.com/connect"
)

// boundedGzipReader inflates a gzip request message and stops with
// ResourceExhausted as soon as it has produced more than limit bytes.
// connect-go, finding a message over the read limit, would otherwise
// inflate the rest only to report its size: a 60 KB gzip bomb would cost
// 60 MB of inflating each.
type boundedGzipReader struct {
	gz       gzip.Reader
	limit    int64
	inflated int64
}

// newBoundedGzipReader returns the gzip decompressor of request messages
// of at most limit bytes.
func newBoundedGzipReader(limit int64) func() connect.Decompressor {
	return func() connect.Decompressor { return &boundedGzipReader{limit: limit} }
}

func (r *boundedGzipReader) Read(p []byte) (int, error) {
	if r.inflated > r.limit {
		return 0, r.tooLarge()
	}
	// Never inflate more than one byte past the limit: enough to know.
	if room := r.limit + 1 - r.inflated; int64(len(p)) > room {
		p = p[:room]
	}
	n, err := r.gz.Read(p)
	r.inflated += int64(n)
	if r.inflated > r.limit {
		return n, r.tooLarge()
	}
	return n, err
}

func (r *boundedGzipReader) tooLarge() error {
	return connect.NewError(connect.CodeResourceExhausted,
		fmt.Errorf("the request message inflates to more than the limit of %d bytes", r.limit))
}

// Reset starts on the next compressed message.
func (r *boundedGzipReader) Reset(src io.Reader) error {
	r.inflated = 0
	return r.gz.Reset(src)
}

// Close releases the reader.
func (r *boundedGzipReader) Close() error { return r.gz.Close() }
