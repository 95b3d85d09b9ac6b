package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/timestamppb"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/upstream"
)

// Clock is the time of the watch pollers: when a poll is made, and how a
// poller waits for the next one. Tests move a fake one by hand.
type Clock interface {
	Now() time.Time
	// After sends the time on the returned channel once d has passed.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// WithWatchClock sets the clock of the watch pollers. Default: the system
// clock.
func WithWatchClock(c Clock) Option {
	return func(s *Service) { s.watchClock = c }
}

// WatchIntervals bound the time between two polls of a watched desktop.
type WatchIntervals struct {
	// Min is the interval while a change is in progress, and after a
	// change settles; 0 < Min <= Max.
	Min time.Duration
	// Max is the interval a settled desktop backs off to, doubling from
	// Min poll by poll.
	Max time.Duration
}

// DefaultWatchIntervals polls every 2 s while a change is in progress (a
// change takes minutes, so the news is at most 2 s late) and backs off to
// every 30 s while none is: a settled desktop of up to 100 records costs
// 2 upstream calls a minute, however many watch it.
func DefaultWatchIntervals() WatchIntervals {
	return WatchIntervals{Min: 2 * time.Second, Max: 30 * time.Second}
}

// WithWatchIntervals sets the poll intervals of watched desktops. Values
// out of order are put in order; Min is at least a millisecond. Default:
// [DefaultWatchIntervals].
func WithWatchIntervals(w WatchIntervals) Option {
	return func(s *Service) {
		w.Min = max(w.Min, time.Millisecond)
		w.Max = max(w.Max, w.Min)
		s.watchIntervals = w
	}
}

// watchJitter spreads the polls of many pollers: an interval is scaled by
// a factor uniform in [1-watchJitter, 1+watchJitter), then bounded by the
// intervals.
const watchJitter = 0.2

// snapshotChunk is how many records one WatchSnapshot carries.
const snapshotChunk = upstream.MaxPageSize

// WatchImageModifiedRecords follows a desktop's changes through the shared
// poller of that desktop (see watchHub). The watcher keeps its own cursor:
// it takes each view the poller publishes, and sends the view's events
// when it took the view before (the common case), or what its cursor does
// not know of the view when it is new, resuming, or lagged behind by more
// than one view (a slow caller never holds the poller up: it skips to the
// latest view and sends the difference).
func (s *Service) WatchImageModifiedRecords(ctx context.Context, req *connect.Request[imagerecordsv1.WatchImageModifiedRecordsRequest], stream *connect.ServerStream[imagerecordsv1.WatchImageModifiedRecordsResponse]) error {
	msg := req.Msg
	region, desktop := msg.GetRegionId(), msg.GetDesktopId()
	var v violations
	v.checkDesktop(region, desktop)
	var cursor *watchCursor
	if len(v) == 0 {
		var err error
		if cursor, err = decodeWatchCursor(s.tokens, region, desktop, msg.GetResumeCursor()); err != nil {
			v.add("resume_cursor", err.Error())
		}
	}
	if err := v.err(); err != nil {
		return err
	}
	annotate(ctx, region, desktop)
	s.metrics.watchWatchers.Add(ctx, 1)
	defer s.metrics.watchWatchers.Add(context.WithoutCancel(ctx), -1)
	p := s.watch.join(region, desktop)
	defer p.leave()
	w := &watcher{s: s, region: region, desktop: desktop, stream: stream, cursor: cursor}
	snapshot := cursor == nil && msg.GetSnapshot()
	for {
		view, changed := p.latest()
		if view != nil && view.version != w.version {
			if view.err != nil {
				return s.toConnectError(ctx, view.err)
			}
			if err := w.take(ctx, view, snapshot); err != nil {
				return err
			}
			if msg.GetUntilSettled() && view.inProgress() == 0 {
				return nil
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return s.toConnectError(ctx, ctx.Err())
		}
	}
}

// watcher is one WatchImageModifiedRecords call.
type watcher struct {
	s               *Service
	region, desktop string
	stream          *connect.ServerStream[imagerecordsv1.WatchImageModifiedRecordsResponse]
	// cursor is what the caller was told; nil before the first view of a
	// watch without resume_cursor.
	cursor *watchCursor
	// version is the last view taken; 0 before the first.
	version int64
}

// take sends what view tells the watcher: the snapshot or nothing at the
// first view of a new watch, the events it does not know, or a heartbeat.
func (w *watcher) take(ctx context.Context, view *watchView, snapshot bool) error {
	first := w.version == 0
	var events []watchEvent
	switch {
	case w.cursor == nil:
		w.cursor = cursorOf(view)
		if snapshot {
			w.version = view.version
			return w.sendSnapshot(ctx, view)
		}
	case view.version == w.version+1 && !first:
		events = view.events
	default:
		events = w.cursor.events(view)
	}
	w.version = view.version
	for _, e := range events {
		w.cursor.apply(e)
		out := &imagerecordsv1.WatchImageModifiedRecordsResponse{}
		record := convertRecords([]upstream.Record{*e.record})[0]
		switch e.kind {
		case eventSettled:
			out.Event = &imagerecordsv1.WatchImageModifiedRecordsResponse_StatusChanged{StatusChanged: &imagerecordsv1.WatchStatusChanged{
				Record: record, PreviousStatus: imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_IN_PROGRESS,
			}}
			w.s.metrics.watchEvents.Add(ctx, 1, eventStatusChanged)
		default:
			out.Event = &imagerecordsv1.WatchImageModifiedRecordsResponse_RecordAdded{RecordAdded: &imagerecordsv1.WatchRecordAdded{Record: record}}
			w.s.metrics.watchEvents.Add(ctx, 1, eventRecordAdded)
		}
		if err := w.send(ctx, out, true); err != nil {
			return err
		}
	}
	if len(events) > 0 {
		w.s.metrics.records.Add(ctx, int64(len(events)), methodWatch)
		return nil
	}
	w.s.metrics.watchEvents.Add(ctx, 1, eventHeartbeat)
	return w.send(ctx, &imagerecordsv1.WatchImageModifiedRecordsResponse{
		Event: &imagerecordsv1.WatchImageModifiedRecordsResponse_Heartbeat{Heartbeat: &imagerecordsv1.WatchHeartbeat{
			PolledAt: timestamppb.New(view.polledAt), InProgress: int32(view.inProgress()),
		}},
	}, true)
}

// sendSnapshot sends view's records in chunks; only the last carries the
// cursor.
func (w *watcher) sendSnapshot(ctx context.Context, view *watchView) error {
	for start := 0; ; start += snapshotChunk {
		end := min(start+snapshotChunk, len(view.records))
		complete := end == len(view.records)
		out := &imagerecordsv1.WatchImageModifiedRecordsResponse{
			Event: &imagerecordsv1.WatchImageModifiedRecordsResponse_Snapshot{Snapshot: &imagerecordsv1.WatchSnapshot{
				Records: convertRecords(view.records[start:end]), Complete: complete,
			}},
		}
		w.s.metrics.watchEvents.Add(ctx, 1, eventSnapshot)
		w.s.metrics.records.Add(ctx, int64(end-start), methodWatch)
		if err := w.send(ctx, out, complete); err != nil {
			return err
		}
		if complete {
			return nil
		}
	}
}

func (w *watcher) send(ctx context.Context, out *imagerecordsv1.WatchImageModifiedRecordsResponse, withCursor bool) error {
	if withCursor {
		out.ResumeCursor = encodeWatchCursor(w.s.tokens, w.region, w.desktop, w.cursor)
	}
	if err := w.stream.Send(out); err != nil {
		if ctx.Err() != nil {
			return w.s.toConnectError(ctx, ctx.Err())
		}
		return err
	}
	return nil
}

// watchHub holds the pollers of the watched desktops: one per region and
// desktop, shared by all its watchers, started by the first and stopped
// when the last leaves.
type watchHub struct {
	s       *Service
	mu      sync.Mutex
	pollers map[string]*poller
}

func newWatchHub(s *Service) *watchHub { return &watchHub{s: s, pollers: map[string]*poller{}} }

// join returns the poller of a desktop, starting it if none runs, and
// counts the caller as its watcher until leave.
func (h *watchHub) join(region, desktop string) *poller {
	h.mu.Lock()
	defer h.mu.Unlock()
	key := cursorBinding(region, desktop)
	p := h.pollers[key]
	if p == nil {
		p = &poller{hub: h, key: key, region: region, desktop: desktop, changed: make(chan struct{}), stop: make(chan struct{})}
		h.pollers[key] = p
		go p.run()
	}
	p.watchers++
	return p
}

// poller polls one desktop and publishes each poll as a watchView.
type poller struct {
	hub             *watchHub
	key             string
	region, desktop string
	stop            chan struct{} // closed when the last watcher leaves
	// watchers is guarded by hub.mu.
	watchers int

	mu      sync.Mutex
	view    *watchView    // the latest view; nil before the first poll
	changed chan struct{} // closed and replaced when view changes
}

// latest returns the latest view and a channel closed when there is a
// newer one.
func (p *poller) latest() (*watchView, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.view, p.changed
}

// leave ends a watcher's use of p; the last one stops it.
func (p *poller) leave() {
	h := p.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if p.watchers--; p.watchers == 0 {
		delete(h.pollers, p.key)
		close(p.stop)
	}
}

// watcherCount is the number of watchers now.
func (p *poller) watcherCount() int {
	p.hub.mu.Lock()
	defer p.hub.mu.Unlock()
	return p.watchers
}

// run polls until stop: at once, then after an interval that is
// Min while a change is in progress or just settled and doubles towards
// Max while the desktop stays settled or polls fail.
func (p *poller) run() {
	s := p.hub.s
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-p.stop
		cancel()
	}()
	s.metrics.watchPollers.Add(ctx, 1)
	defer s.metrics.watchPollers.Add(context.WithoutCancel(ctx), -1)
	iv := s.watchIntervals
	interval := iv.Min
	var prev *watchView
	for {
		view, err := p.poll(ctx, prev)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil && !transient(err):
			p.publish(&watchView{version: prev.versionAfter(), err: err})
			<-p.stop
			return
		case err != nil:
			interval = min(2*interval, iv.Max)
		default:
			if prev != nil && len(view.events) > 0 || view.inProgress() > 0 {
				interval = iv.Min
			} else if prev != nil {
				interval = min(2*interval, iv.Max)
			}
			p.publish(view)
			prev = view
		}
		wait := time.Duration(float64(interval) * (1 - watchJitter + 2*watchJitter*rand.Float64()))
		select {
		case <-s.watchClock.After(min(max(wait, iv.Min), iv.Max)):
		case <-p.stop:
			return
		}
	}
}

func (v *watchView) versionAfter() int64 {
	if v == nil {
		return 1
	}
	return v.version + 1
}

// transient reports whether a failed poll may succeed later: throttling,
// an unavailable upstream or network. Other errors (an unknown desktop, a
// permission, a broken answer) end the watchers.
func transient(err error) bool {
	if apiErr, ok := errors.AsType[*upstream.APIError](err); ok {
		k := apiErr.Kind()
		return k == upstream.KindThrottled || k == upstream.KindUnavailable
	}
	return !isType[*upstream.PaginationError](err) && !errors.Is(err, upstream.ErrMalformedResponse) &&
		!errors.Is(err, upstream.ErrNoCredentials)
}

func (p *poller) publish(v *watchView) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.view = v
	close(p.changed)
	p.changed = make(chan struct{})
}

// poll reads every record of the desktop under its own span (a root span:
// the poll serves every watcher, not one call) and compares them with prev.
func (p *poller) poll(ctx context.Context, prev *watchView) (*watchView, error) {
	s := p.hub.s
	watchers := p.watcherCount()
	ctx, span := s.tracer.Start(ctx, "watch poll", trace.WithNewRoot(), trace.WithAttributes(
		semconv.CloudRegion(p.region), attribute.String("ecd.desktop_id", p.desktop), attribute.Int("ecd.watch.watchers", watchers)))
	defer span.End()
	s.metrics.watchPollWatchers.Record(ctx, int64(watchers))
	polledAt := s.watchClock.Now()
	var records []upstream.Record
	in := upstream.DescribeInput{RegionID: p.region, DesktopID: p.desktop}
	for page, err := range upstream.Pages(ctx, s.api, in) {
		if err != nil {
			span.SetStatus(codes.Error, errorReason(err))
			s.metrics.watchPolls.Add(ctx, 1, outcomeFailed)
			if ctx.Err() == nil {
				s.logger.LogAttrs(ctx, slog.LevelWarn, "watch poll failed", slog.String("error", err.Error()))
			}
			return nil, fmt.Errorf("polling %s: %w", p.desktop, err)
		}
		records = append(records, page.Records...)
	}
	view := newWatchView(records, polledAt)
	view.version = prev.versionAfter()
	if prev != nil {
		view.events = diffViews(prev, view)
	}
	s.metrics.watchPolls.Add(ctx, 1, outcomeOK)
	span.SetAttributes(attribute.Int("ecd.watch.records", len(view.records)),
		attribute.Int("ecd.watch.events", len(view.events)), attribute.Int("ecd.watch.in_progress", view.inProgress()))
	return view, nil
}
