package service_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// The watch tests step a fake clock, shared by the simulator, the
// gateway's signatures and the watch pollers, from poll to poll: a test
// waits until the poller has armed its timer, moves the clock to it, and
// the poll sees the live desktop as it is at that instant. Nothing sleeps.

const (
	liveDesktop = "ecd-watchlive"
	// waitBound bounds every wait for the gateway (a poll, a message).
	waitBound = 20 * time.Second
)

var watchStart = time.Date(2026, 1, 5, 9, 0, 0, 0, time.UTC)

// liveStack is a gateway in front of a simulator with one live desktop of
// history records, on a fake clock.
// args are gateway flags, for a test that needs other than the defaults.
func liveStack(t *testing.T, order ecdsim.Order, history int, args ...string) (*gatewaytest.Stack, *gatewaytest.Clock) {
	t.Helper()
	clock := gatewaytest.NewClock(watchStart)
	h := gatewaytest.New(t, gatewaytest.Config{
		Args:     args,
		Desktops: []ecdsim.Desktop{{ID: liveDesktop, Records: history, Live: true}},
		// A change every 10 minutes on average, in progress for 1 to 3
		// minutes: longer than the gateway's 30 s longest poll interval,
		// so every change is seen in progress (with the simulator's
		// default of 7.5 to 22.5 s a change can start and settle between
		// two polls, and be one WatchRecordAdded).
		Live:           ecdsim.Live{Every: 10 * time.Minute, InProgress: 2 * time.Minute, FailFraction: 0.4},
		Order:          order,
		Now:            clock.Now,
		ServiceOptions: []service.Option{service.WithWatchClock(clock)},
	})
	return h, clock
}

// watchSession is one watch call whose messages a goroutine receives.
type watchSession struct {
	msgs   chan *imagerecordsv1.WatchImageModifiedRecordsResponse
	end    chan error
	cancel context.CancelFunc
}

func startWatch(t *testing.T, c imagerecordsv1connect.ImageRecordsServiceClient, req *imagerecordsv1.WatchImageModifiedRecordsRequest) *watchSession {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	w := &watchSession{msgs: make(chan *imagerecordsv1.WatchImageModifiedRecordsResponse, 4096), end: make(chan error, 1), cancel: cancel}
	if req.RegionId == "" {
		req.RegionId, req.DesktopId = gatewaytest.Region, liveDesktop
	}
	stream, err := c.WatchImageModifiedRecords(ctx, connect.NewRequest(req))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		defer stream.Close()
		for stream.Receive() {
			w.msgs <- stream.Msg()
		}
		w.end <- stream.Err()
	}()
	t.Cleanup(cancel)
	return w
}

// next returns the next message; t fails after waitBound, or when the
// stream ends.
func (w *watchSession) next(t *testing.T) *imagerecordsv1.WatchImageModifiedRecordsResponse {
	t.Helper()
	select {
	case m := <-w.msgs:
		return m
	case err := <-w.end:
		t.Fatalf("the watch ended: %v", err)
	case <-time.After(waitBound):
		t.Fatalf("no watch message within %v", waitBound)
	}
	return nil
}

// stop cancels the watch and waits until its stream has ended.
func (w *watchSession) stop(t *testing.T) {
	t.Helper()
	w.cancel()
	select {
	case <-w.end:
	case <-time.After(waitBound):
		t.Fatalf("the watch did not end within %v of its cancellation", waitBound)
	}
}

// nextEvent returns the next message that is not a heartbeat.
func (w *watchSession) nextEvent(t *testing.T) *imagerecordsv1.WatchImageModifiedRecordsResponse {
	t.Helper()
	for {
		if m := w.next(t); m.GetHeartbeat() == nil {
			return m
		}
	}
}

// pollAt moves the clock to the next poll and returns its time.
func pollAt(t *testing.T, clock *gatewaytest.Clock) time.Time {
	t.Helper()
	at := clock.NextTimer(t, waitBound)
	clock.Set(at)
	return at
}

// checkTransition fails t unless m is the event of change c of the live
// desktop: the record appearing in progress, or settling.
func checkTransition(t *testing.T, h *gatewaytest.Stack, c ecdsim.Change, m *imagerecordsv1.WatchImageModifiedRecordsResponse) {
	t.Helper()
	want := h.Sim.Records(liveDesktop, c.At)[c.Index]
	var r *imagerecordsv1.ImageModifiedRecord
	switch {
	case c.Status == 0 && m.GetRecordAdded() != nil:
		r = m.GetRecordAdded().GetRecord()
	case c.Status != 0 && m.GetStatusChanged() != nil:
		r = m.GetStatusChanged().GetRecord()
		if m.GetStatusChanged().GetPreviousStatus() != gatewaytest.Status(0) {
			t.Fatalf("previous status %v", m.GetStatusChanged().GetPreviousStatus())
		}
	default:
		t.Fatalf("change %+v arrived as %v", c, m)
	}
	if r.GetImageId() != want.ImageID || r.GetNewImageId() != want.NewImageID || r.GetStatus() != gatewaytest.Status(c.Status) ||
		!r.GetUpdateTime().AsTime().Equal(c.At) || r.GetReason() != want.Reason || m.GetResumeCursor() == "" {
		t.Fatalf("change %+v arrived as %v, want record %+v", c, m, want)
	}
}

var orders = []ecdsim.Order{ecdsim.OldestFirst, ecdsim.NewestFirst}

func TestWatchersShareOnePollerAndSeeEveryTransitionOnce(t *testing.T) {
	t.Parallel()
	for _, order := range orders {
		t.Run(order.String()+"_first", func(t *testing.T) {
			t.Parallel()
			h, clock := liveStack(t, order, 5)
			const watchers = 50
			sessions := make([]*watchSession, watchers)
			for i := range sessions {
				sessions[i] = startWatch(t, h.Client(), &imagerecordsv1.WatchImageModifiedRecordsRequest{})
			}
			for i, w := range sessions {
				if hb := w.next(t).GetHeartbeat(); hb == nil || hb.GetInProgress() != 0 {
					t.Fatalf("watcher %d: first message is not a heartbeat of a settled desktop", i)
				}
			}
			end := watchStart.Add(40 * time.Minute)
			polls := 1 // when the first watcher came
			for ; clock.Now().Before(end); polls++ {
				pollAt(t, clock)
				if n := clock.Pending(); n > 1 {
					t.Fatalf("%d pollers wait for their next poll of one desktop, want 1", n)
				}
			}
			changes := h.Sim.Changes(liveDesktop, watchStart, clock.Now())
			if len(changes) < 6 {
				t.Fatalf("only %d transitions in 40 minutes", len(changes))
			}
			for _, w := range sessions {
				for _, c := range changes {
					checkTransition(t, h, c, w.nextEvent(t))
				}
			}
			// One poller: one upstream call per poll (the desktop has fewer
			// than 100 records), not one per watcher.
			if calls := h.Sim.DesktopCalls(liveDesktop); calls != int64(polls) {
				t.Errorf("%d watchers made %d upstream calls in %d polls, want one per poll", watchers, calls, polls)
			}
			for i, w := range sessions {
				w.stop(t)
				for m := range unread(w) {
					if m.GetHeartbeat() == nil {
						t.Fatalf("watcher %d: an extra event %v", i, m)
					}
				}
			}
		})
	}
}

// unread yields the messages w received that nobody took yet; call it
// once its stream has ended.
func unread(w *watchSession) func(func(*imagerecordsv1.WatchImageModifiedRecordsResponse) bool) {
	return func(yield func(*imagerecordsv1.WatchImageModifiedRecordsResponse) bool) {
		for {
			select {
			case m := <-w.msgs:
				if !yield(m) {
					return
				}
			default:
				return
			}
		}
	}
}

func TestWatchUntilSettledEndsAfterTheChangeSettles(t *testing.T) {
	t.Parallel()
	h, clock := liveStack(t, ecdsim.OldestFirst, 250)
	keeper := startWatch(t, h.Client(), &imagerecordsv1.WatchImageModifiedRecordsRequest{})
	keeper.next(t)
	// Poll until a change is in progress.
	var started ecdsim.Change
	for {
		at := pollAt(t, clock)
		if cs := h.Sim.Changes(liveDesktop, watchStart, at); len(cs) > 0 {
			started = cs[0]
			break
		}
	}
	if m := keeper.nextEvent(t); m.GetRecordAdded() == nil {
		t.Fatalf("keeper: %v", m)
	}
	var settle ecdsim.Change
	for _, c := range h.Sim.Changes(liveDesktop, started.At, started.At.Add(time.Hour)) {
		if c.Index == started.Index && c.Status != 0 {
			settle = c
		}
	}
	plain := startWatch(t, h.Client(), &imagerecordsv1.WatchImageModifiedRecordsRequest{UntilSettled: true})
	withSnapshot := startWatch(t, h.Client(), &imagerecordsv1.WatchImageModifiedRecordsRequest{UntilSettled: true, Snapshot: true})
	if hb := plain.next(t).GetHeartbeat(); hb.GetInProgress() != 1 {
		t.Fatalf("first message %v, want a heartbeat with one change in progress", hb)
	}
	var snapshot []*imagerecordsv1.ImageModifiedRecord
	for {
		m := withSnapshot.next(t)
		snapshot = append(snapshot, m.GetSnapshot().GetRecords()...)
		if complete := m.GetSnapshot().GetComplete(); complete != (m.GetResumeCursor() != "") {
			t.Fatalf("snapshot chunk complete=%v with cursor %q", complete, m.GetResumeCursor())
		}
		if m.GetSnapshot().GetComplete() {
			break
		}
	}
	if len(snapshot) != 251 {
		t.Fatalf("snapshot of %d records, want 251", len(snapshot))
	}
	h.CheckRecords(t, liveDesktop, 0, snapshot) // oldest first, as record indices go
	for _, w := range []*watchSession{plain, withSnapshot} {
		ended, events := false, 0
		for !ended {
			select {
			case m := <-w.msgs:
				if m.GetHeartbeat() != nil {
					continue
				}
				checkTransition(t, h, settle, m)
				events++
			case err := <-w.end:
				if err != nil {
					t.Fatalf("until_settled watch ended with %v", err)
				}
				if clock.Now().Before(settle.At) {
					t.Fatalf("until_settled watch ended at %v, before the change settled at %v", clock.Now(), settle.At)
				}
				ended = true
			default:
				pollAt(t, clock)
			}
		}
		for m := range unread(w) {
			if m.GetHeartbeat() == nil {
				checkTransition(t, h, settle, m)
				events++
			}
		}
		if events != 1 {
			t.Fatalf("until_settled watch saw %d events, want the one status change", events)
		}
	}
}

func TestWatchResumesWithoutGapOrRepeat(t *testing.T) {
	t.Parallel()
	for _, order := range orders {
		for _, keep := range []bool{false, true} {
			name := fmt.Sprintf("%v_first/poller_restarts", order)
			if keep {
				name = fmt.Sprintf("%v_first/poller_kept_by_another_watcher", order)
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				h, clock := liveStack(t, order, 120)
				if keep {
					startWatch(t, h.Client(), &imagerecordsv1.WatchImageModifiedRecordsRequest{}).next(t)
				}
				// disconnect cancels w. When no other watcher keeps the
				// poller, it waits until the gateway's side of the call has
				// ended too: the caller's cancellation reaches it in its own
				// time, and a watch started before then would join the old
				// poller instead of starting one, and wait for that poller's
				// next poll, which (armed after the clock moved) never comes.
				disconnect := func(w *watchSession) {
					w.cancel()
					if !keep {
						waitCallsEnded(t, h)
					}
				}
				w := startWatch(t, h.Client(), &imagerecordsv1.WatchImageModifiedRecordsRequest{})
				cursor := w.next(t).GetResumeCursor()
				disconnect(w)
				changes := h.Sim.Changes(liveDesktop, watchStart, watchStart.Add(45*time.Minute))
				for k, c := range changes {
					// Disconnected, the desktop moves on by one transition.
					if keep {
						for clock.Now().Before(c.At) {
							pollAt(t, clock)
						}
					} else {
						clock.Set(c.At)
					}
					w = startWatch(t, h.Client(), &imagerecordsv1.WatchImageModifiedRecordsRequest{ResumeCursor: cursor})
					m := w.nextEvent(t)
					checkTransition(t, h, c, m)
					cursor = m.GetResumeCursor()
					disconnect(w)
					if k == 2 {
						// Resumed at once: nothing new, nothing repeated.
						w = startWatch(t, h.Client(), &imagerecordsv1.WatchImageModifiedRecordsRequest{ResumeCursor: cursor})
						if m := w.next(t); m.GetHeartbeat() == nil {
							t.Fatalf("resumed with nothing new: %v", m)
						}
						disconnect(w)
					}
				}
				w.stop(t)
				for m := range unread(w) {
					if m.GetHeartbeat() == nil {
						t.Fatalf("an event after the last transition: %v", m)
					}
				}
				t.Logf("%d transitions, each seen once after a disconnect; cursor %d bytes", len(changes), len(cursor))
			})
		}
	}
}

func TestWatchPollsOftenWhileAChangeRunsAndBacksOffWhenSettled(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name string
		args []string
		want service.WatchIntervals
	}{
		{"defaults", nil, service.DefaultWatchIntervals()},
		// Other bounds, to show that the flags are what bound the polls.
		{"flags", []string{"--watch-min-interval", "5s", "--watch-max-interval", "1m"}, service.WatchIntervals{Min: 5 * time.Second, Max: time.Minute}},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h, clock := liveStack(t, ecdsim.OldestFirst, 5, tc.args...)
			startWatch(t, h.Client(), &imagerecordsv1.WatchImageModifiedRecordsRequest{}).next(t)
			// A poll that finds a change in progress is followed by one
			// within Min plus the jitter; a settled desktop's polls back off
			// towards Max; no interval leaves [Min, Max].
			shortest, longest := tc.want.Max, tc.want.Min
			short := map[time.Duration]bool{} // intervals after a poll that found a change in progress
			last, end := watchStart, watchStart.Add(40*time.Minute)
			for last.Before(end) {
				at := pollAt(t, clock)
				gap := at.Sub(last)
				if gap < tc.want.Min || gap > tc.want.Max {
					t.Fatalf("a poll %v after the one before, want %v to %v", gap, tc.want.Min, tc.want.Max)
				}
				inProgress := false
				for _, r := range h.Sim.Records(liveDesktop, last) {
					inProgress = inProgress || r.Status == 0
				}
				if inProgress {
					if limit := time.Duration(float64(tc.want.Min) * 1.2); gap >= limit {
						t.Fatalf("the poll at %v found a change in progress; the next came %v later, want less than %v", last, gap, limit)
					}
					short[gap] = true
				}
				shortest, longest = min(shortest, gap), max(longest, gap)
				last = at
			}
			if len(short) < 2 {
				t.Errorf("every poll during a change came after %v: no jitter", slices.Collect(maps.Keys(short)))
			}
			if longest < time.Duration(float64(tc.want.Max)*0.8) {
				t.Errorf("the longest interval was %v: the settled desktop's polls did not back off towards %v", longest, tc.want.Max)
			}
			t.Logf("intervals %v to %v; %d distinct while a change was in progress", shortest, longest, len(short))
		})
	}
}

// waitCallsEnded waits until the gateway has no call in progress, e.g.
// until the gateway's side of a cancelled watch has ended and its watcher
// has left its poller.
func waitCallsEnded(t *testing.T, h *gatewaytest.Stack) {
	t.Helper()
	ended := make(chan struct{})
	go func() {
		h.Gateway.WaitIdle()
		close(ended)
	}()
	select {
	case <-ended:
	case <-time.After(waitBound):
		t.Fatalf("the gateway still serves a call %v after its caller went away", waitBound)
	}
}

func TestWatchRefusesBadInput(t *testing.T) {
	t.Parallel()
	h, _ := liveStack(t, ecdsim.OldestFirst, 5)
	other := startWatch(t, h.Client(), &imagerecordsv1.WatchImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: "ecd-nosuchdesktop"})
	select {
	case err := <-other.end:
		if connect.CodeOf(err) != connect.CodeNotFound || gatewaytest.ErrorInfo(t, err).GetReason() != "InvalidDesktopId.NotFound" {
			t.Fatalf("watch of an unknown desktop: %v", err)
		}
	case m := <-other.msgs:
		t.Fatalf("watch of an unknown desktop sent %v", m)
	case <-time.After(waitBound):
		t.Fatal("watch of an unknown desktop did not end")
	}
	w := startWatch(t, h.Client(), &imagerecordsv1.WatchImageModifiedRecordsRequest{})
	cursor := w.next(t).GetResumeCursor()
	w.cancel()
	testCases := []struct {
		name  string
		req   *imagerecordsv1.WatchImageModifiedRecordsRequest
		field string
	}{
		{"bad desktop", &imagerecordsv1.WatchImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: "i-abc"}, "desktop_id"},
		{"junk cursor", &imagerecordsv1.WatchImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: liveDesktop, ResumeCursor: "junk"}, "resume_cursor"},
		{"cursor of another desktop", &imagerecordsv1.WatchImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: "ecd-other", ResumeCursor: cursor}, "resume_cursor"},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			stream, err := h.Client().WatchImageModifiedRecords(t.Context(), connect.NewRequest(tc.req))
			checkRefused(t, stream, err, tc.field)
		})
	}
}
