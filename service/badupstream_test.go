package service_test

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service"
	"github.com/imagerecords/imagerecords/upstream"
)

// Bad upstream data through the whole service: a misbehaving upstream
// HTTP server, the real upstream client, the service behind a real Connect
// handler, and a Connect client using protobuf JSON (whose encoder refuses
// what the binary one would let through, e.g. out-of-range timestamps).
// Every stream must deliver the good pages, then end with a coded
// Internal error, never hang, panic or send a broken message.

// scriptedUpstream answers each request with the body scripted for its
// NextToken and records the tokens asked for.
type scriptedUpstream struct {
	bodies map[string]string
	mu     sync.Mutex
	tokens []string
}

func (s *scriptedUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	token := r.URL.Query().Get("NextToken")
	s.mu.Lock()
	s.tokens = append(s.tokens, token)
	s.mu.Unlock()
	body, ok := s.bodies[token]
	if !ok {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"RequestId":"X","Code":"InvalidParameter.NextToken","Message":"unscripted token"}`)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, body)
}

func (s *scriptedUpstream) requested() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.tokens)
}

// gatewayFor serves the service over the real client for bodies.
func gatewayFor(t *testing.T, bodies map[string]string) (imagerecordsv1connect.ImageRecordsServiceClient, *scriptedUpstream) {
	t.Helper()
	up := &scriptedUpstream{bodies: bodies}
	upSrv := httptest.NewServer(up)
	t.Cleanup(upSrv.Close)
	client := upstream.NewClient(
		upstream.StaticCredentials{AccessKeyID: "LTAIservicebad", AccessKeySecret: "service-bad-secret"},
		upstream.WithEndpoint(upSrv.URL),
		upstream.WithRetryPolicy(upstream.RetryPolicy{MaxAttempts: 1}),
	)
	mux := http.NewServeMux()
	mux.Handle(imagerecordsv1connect.NewImageRecordsServiceHandler(service.New(client)))
	gw := httptest.NewServer(mux)
	t.Cleanup(gw.Close)
	return imagerecordsv1connect.NewImageRecordsServiceClient(gw.Client(), gw.URL, connect.WithProtoJSON()), up
}

func upstreamBody(requestID string, total int, next string, records ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `{"RequestId":%q,"TotalCount":%d`, requestID, total)
	if next != "" {
		fmt.Fprintf(&b, `,"NextToken":%q`, next)
	}
	b.WriteString(`,"ImageModifiedRecords":[` + strings.Join(records, ",") + `]}`)
	return b.String()
}

func upstreamRecord(status, updateTime string) string {
	return `{"Status":` + status + `,"UpdateTime":` + updateTime + `,"ImageId":"m-1","ImageName":"a","NewImageId":"m-2","NewImageName":"b"}`
}

// drain reads a stream to its end.
func drainStream(t *testing.T, c imagerecordsv1connect.ImageRecordsServiceClient, req *imagerecordsv1.StreamImageModifiedRecordsRequest) ([]*imagerecordsv1.StreamImageModifiedRecordsResponse, error) {
	t.Helper()
	st, err := c.StreamImageModifiedRecords(t.Context(), connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	defer st.Close()
	var msgs []*imagerecordsv1.StreamImageModifiedRecordsResponse
	for st.Receive() {
		msgs = append(msgs, st.Msg())
	}
	return msgs, st.Err()
}

func gatewayInfo(t *testing.T, err error) (*errdetails.ErrorInfo, bool) {
	t.Helper()
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
		t.Fatalf("error %v (%T) is not a *connect.Error", err, err)
	}
	var info *errdetails.ErrorInfo
	retry := false
	for _, d := range cerr.Details() {
		switch v, _ := d.Value(); v := v.(type) {
		case *errdetails.ErrorInfo:
			info = v
		case *errdetails.RetryInfo:
			retry = true
		}
	}
	return info, retry
}

func TestStreamEndsCodedOnBadUpstreamData(t *testing.T) {
	t.Parallel()
	good := upstreamRecord("1", `"2022-03-03T02:43:44.851Z"`)
	emptyRun := func(n int) map[string]string {
		s := map[string]string{"": upstreamBody("R0", 3, "E1", good)}
		for i := 1; i <= n; i++ {
			s[fmt.Sprintf("E%d", i)] = upstreamBody(fmt.Sprintf("R%d", i), 3, fmt.Sprintf("E%d", i+1))
		}
		s[fmt.Sprintf("E%d", n+1)] = upstreamBody("RL", 3, "", good)
		return s
	}
	testCases := []struct {
		name     string
		bodies   map[string]string
		messages int      // before the error
		reasons  []string // acceptable ErrorInfo reasons
	}{
		{"second page truncated", map[string]string{"": upstreamBody("R1", 2, "A", good), "A": upstreamBody("R2", 2, "", good)[:25]}, 1,
			[]string{"UPSTREAM_RESPONSE_MALFORMED"}},
		{"second page {}", map[string]string{"": upstreamBody("R1", 2, "A", good), "A": `{}`}, 1,
			[]string{"UPSTREAM_RESPONSE_MALFORMED"}},
		{"Status past int32", map[string]string{"": upstreamBody("R1", 1, "", upstreamRecord("4294967297", `""`))}, 0,
			[]string{"UPSTREAM_RESPONSE_MALFORMED"}},
		{"TotalCount negative", map[string]string{"": upstreamBody("R1", -1, "", good)}, 0,
			[]string{"UPSTREAM_RESPONSE_MALFORMED"}},
		{"UpdateTime out of the Timestamp range", map[string]string{"": upstreamBody("R1", 1, "", upstreamRecord("1", `"9999-12-31T23:59:59-08:00"`))}, 0,
			[]string{"UPSTREAM_RESPONSE_MALFORMED"}},
		{"token cycle A→B→A", map[string]string{"": upstreamBody("R1", 3, "A", good), "A": upstreamBody("R2", 3, "B", good), "B": upstreamBody("R3", 3, "A", good)}, 2,
			[]string{"UPSTREAM_TOKEN_REPEATED"}},
		// An *EmptyPagesError is a malformed answer sequence; a dedicated
		// reason would do as well.
		{"endless empty pages", emptyRun(upstream.MaxEmptyPages + 1), 1 + upstream.MaxEmptyPages,
			[]string{"UPSTREAM_RESPONSE_MALFORMED", "UPSTREAM_EMPTY_PAGES"}},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, up := gatewayFor(t, tc.bodies)
			req := &imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: "cn-hangzhou", DesktopId: "ecd-bad"}
			msgs, err := drainStream(t, c, req)
			if len(msgs) != tc.messages {
				t.Errorf("%d messages before the error, want %d", len(msgs), tc.messages)
			}
			if connect.CodeOf(err) != connect.CodeInternal {
				t.Fatalf("stream ended with %v, want Internal", err)
			}
			info, retry := gatewayInfo(t, err)
			if info.GetDomain() != service.GatewayErrorDomain || !slices.Contains(tc.reasons, info.GetReason()) {
				t.Errorf("ErrorInfo %v, want domain %s and a reason in %q", info, service.GatewayErrorDomain, tc.reasons)
			}
			if retry {
				t.Errorf("RetryInfo on a broken upstream answer: retrying the same request gets the same answer")
			}
			// The last message's resume token resumes at the page that
			// broke: the one asked for right after the last delivered one.
			if len(msgs) == 0 {
				return
			}
			firstRun := up.requested()
			if len(firstRun) != len(msgs)+1 {
				t.Fatalf("upstream asked for %q, want one call per message and one for the page that broke", firstRun)
			}
			_, _ = drainStream(t, c, &imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: "cn-hangzhou", DesktopId: "ecd-bad", PageToken: msgs[len(msgs)-1].GetResumeToken()})
			got := up.requested()
			if len(got) <= len(firstRun) {
				t.Fatalf("resuming made no upstream call")
			}
			if got, want := got[len(firstRun)], firstRun[len(msgs)]; got != want {
				t.Errorf("resuming asked for upstream token %q, want %q", got, want)
			}
		})
	}
}

func TestStreamKeepsUnknownStatusesAndExtremeValues(t *testing.T) {
	t.Parallel()
	c, _ := gatewayFor(t, map[string]string{"": upstreamBody("R1", math.MaxInt32, "",
		upstreamRecord("7", `"0001-01-01T00:00:00.001Z"`),
		upstreamRecord("-5", `"9999-12-31T23:59:59.999999999Z"`),
		upstreamRecord("2147483647", `""`),
		upstreamRecord("-2147483648", `null`),
		upstreamRecord("2", `"2022-03-03T10:43:44.851+08:00"`),
	)})
	msgs, err := drainStream(t, c, &imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: "cn-hangzhou", DesktopId: "ecd-bad"})
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	if len(msgs) != 1 || msgs[0].GetTotalCount() != math.MaxInt32 || msgs[0].GetRequestId() != "R1" || msgs[0].GetResumeToken() != "" {
		t.Fatalf("messages %v, want one last message with total_count %d", msgs, math.MaxInt32)
	}
	unspecified := imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_UNSPECIFIED
	want := []struct {
		status   imagerecordsv1.ImageModificationStatus
		upstream int32
		time     time.Time // zero: no update_time
	}{
		{unspecified, 7, time.Date(1, 1, 1, 0, 0, 0, 1e6, time.UTC)},
		{unspecified, -5, time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)},
		{unspecified, math.MaxInt32, time.Time{}},
		{unspecified, math.MinInt32, time.Time{}},
		{imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_FAILED, 2, time.Date(2022, 3, 3, 2, 43, 44, 851e6, time.UTC)},
	}
	recs := msgs[0].GetRecords()
	if len(recs) != len(want) {
		t.Fatalf("%d records, want %d: none dropped", len(recs), len(want))
	}
	for i, w := range want {
		r := recs[i]
		if r.GetStatus() != w.status || r.GetUpstreamStatus() != w.upstream {
			t.Errorf("record %d: status %v/%d, want %v/%d", i, r.GetStatus(), r.GetUpstreamStatus(), w.status, w.upstream)
		}
		switch {
		case w.time.IsZero() && r.GetUpdateTime() != nil:
			t.Errorf("record %d: update_time %v, want none", i, r.GetUpdateTime())
		case !w.time.IsZero() && !r.GetUpdateTime().AsTime().Equal(w.time):
			t.Errorf("record %d: update_time %v, want %v", i, r.GetUpdateTime().AsTime(), w.time)
		}
	}
}

func TestListEndsCodedOnBadUpstreamData(t *testing.T) {
	t.Parallel()
	for _, b := range []string{`null`, `{}`, `[]`, `"x"`, `{"RequestId":"R","ImageModifiedRecords":{}}`} {
		t.Run(b, func(t *testing.T) {
			t.Parallel()
			c, _ := gatewayFor(t, map[string]string{"": b})
			_, err := c.ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: "cn-hangzhou", DesktopId: "ecd-bad"}))
			if connect.CodeOf(err) != connect.CodeInternal {
				t.Fatalf("error %v, want Internal", err)
			}
			if info, _ := gatewayInfo(t, err); info.GetReason() != "UPSTREAM_RESPONSE_MALFORMED" {
				t.Errorf("ErrorInfo %v, want reason UPSTREAM_RESPONSE_MALFORMED", info)
			}
		})
	}
}

// A region id that fits the pattern but is longer than a host-name label
// is the caller's mistake (InvalidArgument), not an unreachable upstream.
func TestOverlongRegionIsInvalidArgument(t *testing.T) {
	t.Parallel()
	c, up := gatewayFor(t, map[string]string{"": upstreamBody("R1", 0, "")})
	region := "abcdefghijkl-" + strings.Repeat("a", 24) + "-" + strings.Repeat("b", 24) + "-" + strings.Repeat("c", 24)
	_, err := c.ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: region, DesktopId: "ecd-abc"}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("region of %d bytes: %v, want InvalidArgument", len(region), err)
	}
	if n := len(up.requested()); n != 0 {
		t.Errorf("%d upstream calls, want none", n)
	}
}
