package gateway_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/protobuf/encoding/protojson"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// switchableCredentials signs with the right secret until wrong is set.
type switchableCredentials struct {
	right upstream.Credentials
	wrong atomic.Bool
}

const wrongSecret = "WRONGSECRET-p0o9i8u7y6t5"

func (s *switchableCredentials) Credentials(context.Context) (upstream.Credentials, error) {
	c := s.right
	if s.wrong.Load() {
		c.AccessKeySecret = wrongSecret
	}
	return c, nil
}

// signatureTap remembers every signature and Authorization header the
// gateway sent, so the test can look for them where they must not be.
type signatureTap struct {
	mu     sync.Mutex
	values []string
}

func (s *signatureTap) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		if a := r.Header.Get("Authorization"); a != "" {
			s.values = append(s.values, a, a[strings.LastIndex(a, "Signature=")+len("Signature="):])
		}
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body)) // the simulator reads it again
		for _, raw := range []string{r.URL.RawQuery, string(body)} {
			if q, err := url.ParseQuery(raw); err == nil && q.Get("Signature") != "" {
				s.values = append(s.values, q.Get("Signature"))
			}
		}
		s.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

// TestSecretsNeverLeave runs a whole session — List, Stream, a throttled
// stream, a persistently throttled one and a failed signature — for both
// signature versions with distinctive secret values, and looks for them in
// every span, log line, metric and response the gateway produced.
func TestSecretsNeverLeave(t *testing.T) {
	t.Parallel()
	key := ecdsim.Key{
		AccessKeyID:     "STS.LTAIvisibleKeyId",
		AccessKeySecret: "SECRET-zq9w8e7r6t5y4u3i",
		SecurityToken:   "STSTOKEN-a1s2d3f4g5h6j7k8",
	}
	for _, sig := range []upstream.SignatureVersion{upstream.SignatureV3, upstream.SignatureV1} {
		t.Run(string(sig), func(t *testing.T) {
			t.Parallel()
			rec := tracetest.NewSpanRecorder()
			var logs gatewaytest.Output
			tap := &signatureTap{}
			creds := &switchableCredentials{right: upstream.Credentials(key)}
			h := gatewaytest.New(t, gatewaytest.Config{
				Desktops:    testDesktops,
				Keys:        []ecdsim.Key{key},
				Credentials: creds,
				// Not the default --upstream-max-wait of 30 s: the session
				// streams through an upstream that throttles every call,
				// and its throttling error must reach the caller in 1 s.
				Args:          []string{"--signature", string(sig), "--upstream-max-wait", "1s"},
				SpanProcessor: rec,
				Logs:          &logs,
				WrapSimulator: tap.wrap,
			})
			var seen strings.Builder // everything a caller or operator can see
			c := h.Client(connect.WithGRPC())
			stream := func() {
				s, err := c.StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: bigDesktop}))
				if err != nil {
					seen.WriteString(err.Error())
					return
				}
				msgs, err := gatewaytest.Drain(s)
				for _, m := range msgs {
					b, _ := protojson.Marshal(m)
					seen.Write(b)
				}
				writeErr(&seen, err)
			}

			res, err := c.ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: bigDesktop}))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := protojson.Marshal(res.Msg)
			seen.Write(b)
			stream()
			h.Sim.SetFaults(ecdsim.Faults{ThrottleFraction: 0.3})
			stream()
			h.Sim.SetFaults(ecdsim.Faults{ThrottleFraction: 1})
			stream()
			h.Sim.SetFaults(ecdsim.Faults{})
			creds.wrong.Store(true)
			_, err = c.ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: bigDesktop}))
			if connect.CodeOf(err) != connect.CodeInternal {
				t.Fatalf("wrong secret: %v", err)
			}
			writeErr(&seen, err)
			h.Gateway.WaitIdle()

			for _, s := range rec.Ended() {
				fmt.Fprintf(&seen, "%s %v %v\n", s.Name(), s.Attributes(), s.Status())
				for _, e := range s.Events() {
					fmt.Fprintf(&seen, "%s %v\n", e.Name, e.Attributes)
				}
			}
			if len(rec.Started()) != len(rec.Ended()) {
				t.Errorf("%d spans started, %d ended", len(rec.Started()), len(rec.Ended()))
			}
			metrics := httptest.NewRecorder()
			h.Telemetry.Metrics.ServeHTTP(metrics, httptest.NewRequest(http.MethodGet, "/metrics", nil))
			seen.WriteString(metrics.Body.String())
			seen.WriteString(logs.String())

			tap.mu.Lock()
			secrets := append([]string{key.AccessKeySecret, key.SecurityToken, wrongSecret, "Authorization", "ACS3-HMAC-SHA256 Credential"}, tap.values...)
			tap.mu.Unlock()
			if len(tap.values) < 10 {
				t.Fatalf("tapped only %d signatures: the session did not run", len(tap.values))
			}
			all := seen.String()
			for _, secret := range secrets {
				if i := strings.Index(all, secret); i >= 0 {
					t.Errorf("%q leaked: …%s…", secret, all[max(0, i-200):min(len(all), i+len(secret)+50)])
				}
			}
			// The session did produce what an operator needs.
			for _, want := range []string{"SignatureDoesNotMatch", "Throttling.User", `"msg":"rpc"`, upstream.SpanName} {
				if !strings.Contains(all, want) {
					t.Errorf("the captured output lacks %q: the test would not see a leak there", want)
				}
			}
		})
	}
}

func writeErr(w *strings.Builder, err error) {
	if err == nil {
		return
	}
	fmt.Fprintf(w, "%v\n", err)
	if cerr, ok := err.(*connect.Error); ok {
		for _, d := range cerr.Details() {
			v, _ := d.Value()
			fmt.Fprintf(w, "%v\n", v)
		}
		fmt.Fprintf(w, "%v\n", cerr.Meta())
	}
}
