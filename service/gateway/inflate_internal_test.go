package gateway

import (
	"bytes"
	"compress/gzip"
	"io"
	"testing"

	"connectrpc.com/connect"
)

// gzipOfZeros is n zero bytes, gzipped: a gzip bomb for large n.
func gzipOfZeros(t *testing.T, n int) []byte {
	t.Helper()
	var z bytes.Buffer
	gz, err := gzip.NewWriterLevel(&z, gzip.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gz.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return z.Bytes()
}

// TestBoundedGzipReaderStopsOneBytePastTheLimit: whatever buffer its
// reader offers, the decompressor inflates at most one byte more than the
// limit and then refuses with ResourceExhausted (README, Limits: a 60 MiB
// bomb costs 64 KiB of inflating). The end-to-end test
// (TestAuthComesBeforeTheBody) sees only the refusal, not how much was
// inflated before it.
func TestBoundedGzipReaderStopsOneBytePastTheLimit(t *testing.T) {
	t.Parallel()
	const limit = 64 << 10 // the default --max-request-bytes
	bomb := gzipOfZeros(t, 60<<20)
	testCases := []struct {
		name string
		read func(io.Reader) (int, error)
	}{
		{"io.ReadAll", func(r io.Reader) (int, error) {
			b, err := io.ReadAll(r)
			return len(b), err
		}},
		{"one 1 MiB buffer at a time", func(r io.Reader) (int, error) {
			buf, total := make([]byte, 1<<20), 0
			for {
				n, err := r.Read(buf)
				total += n
				if err != nil {
					return total, err
				}
			}
		}},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := newBoundedGzipReader(limit)().(*boundedGzipReader)
			if err := d.Reset(bytes.NewReader(bomb)); err != nil {
				t.Fatal(err)
			}
			got, err := tc.read(d)
			if connect.CodeOf(err) != connect.CodeResourceExhausted {
				t.Fatalf("a 60 MiB bomb: %v, want ResourceExhausted", err)
			}
			if d.inflated != limit+1 || got != limit+1 {
				t.Errorf("inflated %d bytes and returned %d, want %d: one past the limit", d.inflated, got, limit+1)
			}
			// The same decompressor takes the next message afresh.
			if err := d.Reset(bytes.NewReader(gzipOfZeros(t, limit))); err != nil {
				t.Fatal(err)
			}
			if got, err := tc.read(d); err != io.EOF && err != nil || got != limit {
				t.Errorf("a message of exactly the limit after a bomb: %d bytes, %v; want all %d", got, err, limit)
			}
		})
	}
}
