package gateway_test

import (
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
)

// firstWriteGate is a ResponseWriter whose first body write waits until
// open is closed (or gives up after timeout): the gateway is then still
// sending its first message.
type firstWriteGate struct {
	http.ResponseWriter
	open     <-chan struct{}
	timeout  time.Duration
	once     sync.Once
	timedOut *atomic.Bool // set when the wait gave up
}

func (g *firstWriteGate) Write(p []byte) (int, error) {
	g.once.Do(func() {
		select {
		case <-g.open:
		case <-time.After(g.timeout):
			g.timedOut.Store(true)
		}
	})
	return g.ResponseWriter.Write(p)
}

// Flush flushes the response, as connect's streaming handlers require.
func (g *firstWriteGate) Flush() { _ = http.NewResponseController(g.ResponseWriter).Flush() }

// Unwrap lets http.ResponseController reach the server's writer.
func (g *firstWriteGate) Unwrap() http.ResponseWriter { return g.ResponseWriter }

// TestStreamFetchesTheNextPageWhileSendingOne: the gateway's write of a
// stream's first message (page 1) does not complete until the upstream has
// been asked for page 2. A stream that fetched page 2 only after sending
// page 1 would leave the write waiting, and the test fails.
func TestStreamFetchesTheNextPageWhileSendingOne(t *testing.T) {
	t.Parallel()
	const bound = 10 * time.Second // the write waits this long for page 2's call at most
	secondCall := make(chan struct{})
	var calls atomic.Int32
	var timedOut atomic.Bool
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops: testDesktops,
		WrapSimulator: func(sim http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if calls.Add(1) == 2 {
					close(secondCall)
				}
				sim.ServeHTTP(w, r)
			})
		},
		WrapHandler: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				next.ServeHTTP(&firstWriteGate{ResponseWriter: w, open: secondCall, timeout: bound, timedOut: &timedOut}, r)
			})
		},
	})
	msgs, err := gatewaytest.Stream(t.Context(), h.Client(connect.WithGRPC()), &imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: bigDesktop,
	})
	if err != nil {
		t.Fatal(err)
	}
	if timedOut.Load() {
		t.Fatalf("the first message's write waited %v without the upstream being asked for page 2: the stream does not prefetch", bound)
	}
	if got := len(gatewaytest.RecordsOf(msgs)); got != 1234 {
		t.Errorf("%d records, want 1234", got)
	}
}
