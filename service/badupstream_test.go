package service_test

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/upstreamtest"
)

// Bad upstream data through the whole service: a misbehaving upstream
// HTTP server, the real upstream client, the service behind a real Connect
// handler, and a Connect client using protobuf JSON (whose encoder refuses
// what the binary one would let through, e.g. out-of-range timestamps).
// Every stream must deliver the good pages, then end with a coded
// Internal error, never hang, panic or send a broken message.

// gatewayFor serves the gateway at its defaults in front of an upstream
// that answers bodies (page bodies by NextToken), and returns a client
// speaking Connect with protobuf JSON.
func gatewayFor(t *testing.T, bodies map[string]string) (imagerecordsv1connect.ImageRecordsServiceClient, *upstreamtest.Upstream) {
	t.Helper()
	up := upstreamtest.ByToken(t, bodies)
	h := gatewaytest.New(t, gatewaytest.Config{
		Upstream: up.URL,
	})
	return h.Client(connect.WithProtoJSON()), up
}

// gatewayInfo is the ErrorInfo of err, and whether err carries a RetryInfo.
func gatewayInfo(t *testing.T, err error) (*errdetails.ErrorInfo, bool) {
	t.Helper()
	_, retry := gatewaytest.Detail[*errdetails.RetryInfo](err)
	return gatewaytest.ErrorInfo(t, err), retry
}

func TestStreamEndsCodedOnBadUpstreamData(t *testing.T) {
	t.Parallel()
	good := upstreamtest.RecordWith("Status", "1", "UpdateTime", `"2022-03-03T02:43:44.851Z"`)
	emptyRun := func(n int) map[string]string {
		s := map[string]string{"": upstreamtest.Page("R0", 3, "E1", good)}
		for i := 1; i <= n; i++ {
			s[fmt.Sprintf("E%d", i)] = upstreamtest.Page(fmt.Sprintf("R%d", i), 3, fmt.Sprintf("E%d", i+1))
		}
		s[fmt.Sprintf("E%d", n+1)] = upstreamtest.Page("RL", 3, "", good)
		return s
	}
	testCases := []struct {
		name     string
		bodies   map[string]string
		messages int      // before the error
		reasons  []string // acceptable ErrorInfo reasons
	}{
		{"second page truncated", map[string]string{"": upstreamtest.Page("R1", 2, "A", good), "A": upstreamtest.Page("R2", 2, "", good)[:25]}, 1,
			[]string{"UPSTREAM_RESPONSE_MALFORMED"}},
		{"second page {}", map[string]string{"": upstreamtest.Page("R1", 2, "A", good), "A": `{}`}, 1,
			[]string{"UPSTREAM_RESPONSE_MALFORMED"}},
		{"Status past int32", map[string]string{"": upstreamtest.Page("R1", 1, "", upstreamtest.RecordWith("Status", "4294967297", "UpdateTime", `""`))}, 0,
			[]string{"UPSTREAM_RESPONSE_MALFORMED"}},
		{"TotalCount negative", map[string]string{"": upstreamtest.Page("R1", -1, "", good)}, 0,
			[]string{"UPSTREAM_RESPONSE_MALFORMED"}},
		{"UpdateTime out of the Timestamp range", map[string]string{"": upstreamtest.Page("R1", 1, "", upstreamtest.RecordWith("Status", "1", "UpdateTime", `"9999-12-31T23:59:59-08:00"`))}, 0,
			[]string{"UPSTREAM_RESPONSE_MALFORMED"}},
		{"token cycle A→B→A", map[string]string{"": upstreamtest.Page("R1", 3, "A", good), "A": upstreamtest.Page("R2", 3, "B", good), "B": upstreamtest.Page("R3", 3, "A", good)}, 2,
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
			msgs, err := gatewaytest.Stream(t.Context(), c, req)
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
			firstRun := up.Tokens()
			if len(firstRun) != len(msgs)+1 {
				t.Fatalf("upstream asked for %q, want one call per message and one for the page that broke", firstRun)
			}
			_, _ = gatewaytest.Stream(t.Context(), c, &imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: "cn-hangzhou", DesktopId: "ecd-bad", PageToken: msgs[len(msgs)-1].GetResumeToken()})
			got := up.Tokens()
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
	c, _ := gatewayFor(t, map[string]string{"": upstreamtest.Page("R1", math.MaxInt32, "",
		upstreamtest.RecordWith("Status", "7", "UpdateTime", `"0001-01-01T00:00:00.001Z"`),
		upstreamtest.RecordWith("Status", "-5", "UpdateTime", `"9999-12-31T23:59:59.999999999Z"`),
		upstreamtest.RecordWith("Status", "2147483647", "UpdateTime", `""`),
		upstreamtest.RecordWith("Status", "-2147483648", "UpdateTime", `null`),
		upstreamtest.RecordWith("Status", "2", "UpdateTime", `"2022-03-03T10:43:44.851+08:00"`),
	)})
	msgs, err := gatewaytest.Stream(t.Context(), c, &imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: "cn-hangzhou", DesktopId: "ecd-bad"})
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
	c, up := gatewayFor(t, map[string]string{"": upstreamtest.Page("R1", 0, "")})
	region := "abcdefghijkl-" + strings.Repeat("a", 24) + "-" + strings.Repeat("b", 24) + "-" + strings.Repeat("c", 24)
	_, err := c.ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: region, DesktopId: "ecd-abc"}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("region of %d bytes: %v, want InvalidArgument", len(region), err)
	}
	if n := len(up.Tokens()); n != 0 {
		t.Errorf("%d upstream calls, want none", n)
	}
}
