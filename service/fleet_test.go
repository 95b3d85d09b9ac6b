package service_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
	"github.com/imagerecords/imagerecords/upstream/upstreamtest"
)

// fleetOf is a fleet of the test: the simulator's desktops, the ids asked
// for, and the bad ones.
type fleetOf struct {
	desktops  []ecdsim.Desktop // the simulator's
	ids       []string         // asked for: the good, the unknown, the stuck and the throttled
	good      map[string]int   // id → records
	notFound  []string
	stuck     string
	throttled string
}

// newFleet makes 291 good desktops of 0 to 220 records (seeded), 7 ids the
// simulator does not know, one desktop whose NextToken never advances and
// one the upstream always throttles: 300 ids.
func newFleet() fleetOf {
	rng := rand.New(rand.NewPCG(12, 34))
	f := fleetOf{good: map[string]int{}, stuck: "ecd-fleetstuck", throttled: "ecd-fleetthrottled"}
	for i := range 291 {
		d := ecdsim.Desktop{ID: fmt.Sprintf("ecd-fleet%03d", i), Records: rng.IntN(221)}
		f.desktops = append(f.desktops, d)
		f.good[d.ID] = d.Records
		f.ids = append(f.ids, d.ID)
	}
	for i := range 7 {
		f.notFound = append(f.notFound, fmt.Sprintf("ecd-nosuchdesktop%d", i))
	}
	f.desktops = append(f.desktops, ecdsim.Desktop{ID: f.stuck, Records: 250, StuckToken: true},
		ecdsim.Desktop{ID: f.throttled, Records: 50})
	f.ids = append(f.ids, f.notFound...)
	f.ids = append(f.ids, f.stuck, f.throttled)
	rng.Shuffle(len(f.ids), func(i, j int) { f.ids[i], f.ids[j] = f.ids[j], f.ids[i] })
	return f
}

// throttle answers every request for desktop with Throttling.User, and
// counts every request that reaches it.
func throttle(desktop string, requests *atomic.Int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			requests.Add(1)
			if r.URL.Query().Get("DesktopId") == desktop {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusBadRequest)
				_, _ = io.WriteString(w, upstreamtest.ErrorBody("Throttling.User"))
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// fleetCall makes one fleet call from token and receives up to cut
// messages (0: all). It returns the messages and the last resume token
// (token when none came).
func fleetCall(ctx context.Context, c imagerecordsv1connect.ImageRecordsServiceClient, ids []string, token string, cut int) ([]*imagerecordsv1.StreamFleetImageModifiedRecordsResponse, string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.StreamFleetImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.StreamFleetImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopIds: ids, PageToken: token,
	}))
	if err != nil {
		return nil, token, err
	}
	defer stream.Close()
	var msgs []*imagerecordsv1.StreamFleetImageModifiedRecordsResponse
	for stream.Receive() {
		msgs = append(msgs, stream.Msg())
		if t := stream.Msg().GetResumeToken(); t != "" {
			token = t
		}
		if len(msgs) == cut {
			cancel() // the caller goes away at this point
			return msgs, token, nil
		}
	}
	return msgs, token, stream.Err()
}

// checkFleet fails t unless msgs, the messages of one fleet run however
// many calls it took, hold every record of every good desktop exactly once
// and in order, one FleetDesktopDone per good desktop, one
// FleetDesktopError per bad one, and one correct summary, last.
func checkFleet(t *testing.T, h *gatewaytest.Stack, f fleetOf, msgs []*imagerecordsv1.StreamFleetImageModifiedRecordsResponse) *imagerecordsv1.FleetSummary {
	t.Helper()
	records := map[string][]*imagerecordsv1.ImageModifiedRecord{}
	done := map[string][]*imagerecordsv1.FleetDesktopDone{}
	failed := map[string][]*imagerecordsv1.FleetDesktopError{}
	var summaries []*imagerecordsv1.FleetSummary
	total := 0
	for i, m := range msgs {
		switch e := m.GetEvent().(type) {
		case *imagerecordsv1.StreamFleetImageModifiedRecordsResponse_DesktopRecords:
			id := e.DesktopRecords.GetDesktopId()
			if len(done[id])+len(failed[id]) > 0 {
				t.Fatalf("message %d: records of %s after its end", i, id)
			}
			records[id] = append(records[id], e.DesktopRecords.GetRecords()...)
			total += len(e.DesktopRecords.GetRecords())
		case *imagerecordsv1.StreamFleetImageModifiedRecordsResponse_DesktopDone:
			done[e.DesktopDone.GetDesktopId()] = append(done[e.DesktopDone.GetDesktopId()], e.DesktopDone)
		case *imagerecordsv1.StreamFleetImageModifiedRecordsResponse_DesktopError:
			failed[e.DesktopError.GetDesktopId()] = append(failed[e.DesktopError.GetDesktopId()], e.DesktopError)
		case *imagerecordsv1.StreamFleetImageModifiedRecordsResponse_Summary:
			if i != len(msgs)-1 {
				t.Fatalf("summary at message %d of %d", i, len(msgs))
			}
			summaries = append(summaries, e.Summary)
		default:
			t.Fatalf("message %d has no event: %v", i, m)
		}
		if m.GetResumeToken() == "" {
			t.Fatalf("message %d has no resume token", i)
		}
	}
	for id, n := range f.good {
		if len(records[id]) != n || len(done[id]) != 1 || len(failed[id]) != 0 || done[id][0].GetRecords() != int64(n) {
			t.Fatalf("%s: %d records, %d done messages (%v), %d error messages; want %d records and one done message",
				id, len(records[id]), len(done[id]), done[id], len(failed[id]), n)
		}
		h.CheckRecords(t, id, 0, records[id])
	}
	recordsByDesktop := records
	checkFailed := func(id string, code imagerecordsv1.ErrorCode, reason string, records int) {
		t.Helper()
		if len(failed[id]) != 1 || len(done[id]) != 0 {
			t.Fatalf("%s: %d error messages, %d done messages; want one error message", id, len(failed[id]), len(done[id]))
		}
		e := failed[id][0]
		if e.GetCode() != code || e.GetErrorInfo().GetReason() != reason || e.GetRecords() != int64(records) || len(recordsByDesktop[id]) != records {
			t.Fatalf("%s: error %v, want %v %s after %d records", id, e, code, reason, records)
		}
	}
	for _, id := range f.notFound {
		checkFailed(id, imagerecordsv1.ErrorCode_ERROR_CODE_NOT_FOUND, "InvalidDesktopId.NotFound", 0)
	}
	checkFailed(f.stuck, imagerecordsv1.ErrorCode_ERROR_CODE_INTERNAL, "UPSTREAM_TOKEN_REPEATED", 100)
	h.CheckRecords(t, f.stuck, 0, records[f.stuck])
	checkFailed(f.throttled, imagerecordsv1.ErrorCode_ERROR_CODE_UNAVAILABLE, "Throttling.User", 0)
	if failed[f.throttled][0].GetRetryDelay() == nil {
		t.Errorf("the throttled desktop's error has no retry_delay: %v", failed[f.throttled][0])
	}
	if len(summaries) != 1 {
		t.Fatalf("%d summaries", len(summaries))
	}
	s := summaries[0]
	wantFailed := len(f.notFound) + 2
	if s.GetDesktops() != int32(len(f.ids)) || s.GetDesktopsOk() != int32(len(f.good)) || s.GetDesktopsFailed() != int32(wantFailed) || s.GetRecords() != int64(total) {
		t.Fatalf("summary %v, want %d desktops, %d ok, %d failed, %d records", s, len(f.ids), len(f.good), wantFailed, total)
	}
	return s
}

func TestFleetStreamsEveryDesktopOnceThroughCutsAndResumes(t *testing.T) {
	t.Parallel()
	f := newFleet()
	var requests atomic.Int64
	// At the production defaults (16 desktops at once, 100 upstream calls
	// per second): a run takes about 500 calls.
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: f.desktops, WrapSimulator: throttle(f.throttled, &requests)})
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	c := h.Client()

	msgs, _, err := fleetCall(ctx, c, f.ids, "", 0)
	if err != nil {
		t.Fatalf("uninterrupted fleet: %v", err)
	}
	s := checkFleet(t, h, f, msgs)
	if s.GetUpstreamCalls() != requests.Load() {
		t.Errorf("summary says %d upstream calls; the upstream saw %d", s.GetUpstreamCalls(), requests.Load())
	}

	// Cut at a random message 20 times in a row, resuming each time from
	// the last token received; then run to the end.
	rng := rand.New(rand.NewPCG(56, 78))
	var all []*imagerecordsv1.StreamFleetImageModifiedRecordsResponse
	token := ""
	for cut := range 21 {
		n := 1 + rng.IntN(30)
		if cut == 20 {
			n = 0
		}
		got, next, err := fleetCall(ctx, c, f.ids, token, n)
		if err != nil {
			t.Fatalf("call %d from token of %d bytes: %v", cut+1, len(token), err)
		}
		if n > 0 && len(got) < n {
			t.Fatalf("call %d ended after %d messages, before the cut at %d: too few messages for 20 cuts", cut+1, len(got), n)
		}
		all = append(all, got...)
		token = next
	}
	s = checkFleet(t, h, f, all)
	t.Logf("20 cuts and resumes: %d messages; summary %v; last token %d bytes", len(all), s, len(token))

	// The summary's token resumes to the summary alone, without a call.
	requests.Store(0)
	again, _, err := fleetCall(ctx, c, f.ids, token, 0)
	if err != nil || len(again) != 1 || again[0].GetSummary().GetRecords() != s.GetRecords() || requests.Load() != 0 {
		t.Fatalf("from the summary's token: %v, %v, %d upstream calls", again, err, requests.Load())
	}
}

func TestFleetValidatesBeforeAnyUpstreamCall(t *testing.T) {
	t.Parallel()
	h := gatewaytest.New(t, gatewaytest.Config{})
	c := h.Client()
	ids := make([]string, 1001)
	for i := range ids {
		ids[i] = fmt.Sprintf("ecd-many%04d", i)
	}
	otherSet := func() string {
		msgs, _, err := fleetCall(t.Context(), c, []string{"ecd-a1", "ecd-a2"}, "", 1)
		if err != nil || len(msgs) == 0 {
			t.Fatalf("fleet of two: %v", err)
		}
		return msgs[0].GetResumeToken()
	}()
	// The fleet above was cut by its caller; its page calls end with it.
	h.Gateway.WaitIdle()
	requests := h.Sim.Stats().Requests
	testCases := []struct {
		name  string
		req   *imagerecordsv1.StreamFleetImageModifiedRecordsRequest
		field string
	}{
		{"no region", &imagerecordsv1.StreamFleetImageModifiedRecordsRequest{DesktopIds: []string{"ecd-a1"}}, "region_id"},
		{"no desktops", &imagerecordsv1.StreamFleetImageModifiedRecordsRequest{RegionId: gatewaytest.Region}, "desktop_ids"},
		{"a bad id", &imagerecordsv1.StreamFleetImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopIds: []string{"ecd-a1", "i-notadesktop"}}, "desktop_ids[1]"},
		{"1001 ids", &imagerecordsv1.StreamFleetImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopIds: ids}, "desktop_ids"},
		{"negative concurrency", &imagerecordsv1.StreamFleetImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopIds: []string{"ecd-a1"}, MaxConcurrency: -1}, "max_concurrency"},
		{"junk token", &imagerecordsv1.StreamFleetImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopIds: []string{"ecd-a1"}, PageToken: "junk"}, "page_token"},
		{"token of another set", &imagerecordsv1.StreamFleetImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopIds: []string{"ecd-a1", "ecd-a3"}, PageToken: otherSet}, "page_token"},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			stream, err := c.StreamFleetImageModifiedRecords(t.Context(), connect.NewRequest(tc.req))
			checkRefused(t, stream, err, tc.field)
		})
	}
	t.Cleanup(func() {
		if got := h.Sim.Stats().Requests; got != requests {
			t.Errorf("invalid fleets made %d upstream calls", got-requests)
		}
	})
}

// checkRefused fails t unless a server stream opened with (stream, err)
// ends with invalid_argument naming field, before any message.
func checkRefused[T any](t *testing.T, stream *connect.ServerStreamForClient[T], err error, field string) {
	t.Helper()
	if err == nil {
		defer stream.Close()
		for stream.Receive() {
			t.Fatalf("a message: %v", stream.Msg())
		}
		err = stream.Err()
	}
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("err = %v, want invalid_argument", err)
	}
	gatewaytest.CheckFieldViolation(t, err, field)
}

func TestFleetFoldsDuplicatesAndIgnoresOrder(t *testing.T) {
	t.Parallel()
	desktops := ecdsim.DefaultDesktops(gatewaytest.Seed)
	h := gatewaytest.New(t, gatewaytest.Config{})
	a, b := desktops[2].ID, desktops[4].ID // 101 and 42 records
	msgs, _, err := fleetCall(t.Context(), h.Client(), []string{b, a, b, a}, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	// A token of one spelling of the set resumes another.
	first, _, err := fleetCall(t.Context(), h.Client(), []string{a, b}, "", 1)
	if err != nil || len(first) != 1 {
		t.Fatalf("%d messages, %v", len(first), err)
	}
	rest, _, err := fleetCall(t.Context(), h.Client(), []string{b, a}, first[0].GetResumeToken(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, run := range [][]*imagerecordsv1.StreamFleetImageModifiedRecordsResponse{msgs, append(first, rest...)} {
		s := run[len(run)-1].GetSummary()
		if s.GetDesktops() != 2 || s.GetDesktopsOk() != 2 || s.GetRecords() != 143 {
			t.Fatalf("summary %v, want 2 desktops with 143 records", s)
		}
	}
}

func TestFleetEndsOnFleetWideErrors(t *testing.T) {
	t.Parallel()
	h := gatewaytest.New(t, gatewaytest.Config{})
	stream, err := h.Client().StreamFleetImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamFleetImageModifiedRecordsRequest{
		RegionId: "xx-nowhere-1", DesktopIds: []string{"ecd-a1", "ecd-a2", "ecd-a3"},
	}))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for stream.Receive() {
		n++
	}
	err = stream.Err()
	if n != 0 || connect.CodeOf(err) != connect.CodeInvalidArgument || gatewaytest.ErrorInfo(t, err).GetReason() != "InvalidRegionId" {
		t.Fatalf("%d messages, then %v; want the stream to end with InvalidRegionId, not one error message per desktop", n, err)
	}
}

func TestFleetConcurrencyOneSendsDesktopsOneAfterAnother(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name        string
		args        []string
		concurrency int32
	}{
		{"max_concurrency 1", nil, 1},
		// The flag is the cap of max_concurrency: a fleet that asks for
		// 64 desktops at once gets the flag's 1 (the default, 16, would
		// not show the cap with three desktops).
		{"max_concurrency 64 capped by --fleet-concurrency 1", []string{"--fleet-concurrency", "1"}, 64},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			desktops := ecdsim.DefaultDesktops(gatewaytest.Seed)
			h := gatewaytest.New(t, gatewaytest.Config{Args: tc.args})
			ids := []string{desktops[1].ID, desktops[2].ID, desktops[4].ID} // 250, 101 and 42 records
			stream, err := h.Client().StreamFleetImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamFleetImageModifiedRecordsRequest{
				RegionId: gatewaytest.Region, DesktopIds: ids, MaxConcurrency: tc.concurrency,
			}))
			if err != nil {
				t.Fatal(err)
			}
			defer stream.Close()
			var order []string // desktop of each message, runs folded
			for stream.Receive() {
				id := stream.Msg().GetDesktopRecords().GetDesktopId() + stream.Msg().GetDesktopDone().GetDesktopId()
				if id != "" && (len(order) == 0 || order[len(order)-1] != id) {
					order = append(order, id)
				}
			}
			if err := stream.Err(); err != nil {
				t.Fatal(err)
			}
			sorted := slices.Sorted(slices.Values(ids))
			if !slices.Equal(order, sorted) {
				t.Fatalf("the desktops came as %q, want one after another in id order %q", order, sorted)
			}
		})
	}
}
