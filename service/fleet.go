package service

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/durationpb"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/upstream"
)

// DefaultFleetConcurrency is how many desktops a fleet call pages at once
// unless told otherwise: at 20 ms per upstream call, 16 desktops can make
// 800 calls per second, more than an account's quota allows, while a
// fleet holds at most 2 pages (about 80 KiB) per desktop in memory.
const DefaultFleetConcurrency = 16

// WithFleetConcurrency sets how many desktops a fleet call pages at once
// when it does not ask for fewer: the default and the cap of
// max_concurrency, 1..[MaxFleetConcurrency]. Default:
// [DefaultFleetConcurrency].
func WithFleetConcurrency(n int) Option {
	return func(s *Service) { s.fleetConcurrency = min(max(n, 1), MaxFleetConcurrency) }
}

// StreamFleetImageModifiedRecords streams every record of a set of desktops.
//
// Up to max_concurrency workers each take the next desktop and page it in
// order with upstream.Pages (100 records per call, one page prefetched),
// handing each page to this goroutine over an unbuffered channel. This
// goroutine alone sends messages and keeps the fleetState that every
// resume token encodes, so a token says exactly what its message and those
// before it told the caller. A worker waits while its page is not taken, so
// a slow caller slows every worker (HTTP/2 flow control blocks Send), and
// the gateway holds at most two pages per worker whatever the fleet's size.
func (s *Service) StreamFleetImageModifiedRecords(ctx context.Context, req *connect.Request[imagerecordsv1.StreamFleetImageModifiedRecordsRequest], stream *connect.ServerStream[imagerecordsv1.StreamFleetImageModifiedRecordsResponse]) error {
	msg := req.Msg
	region := msg.GetRegionId()
	var v violations
	v.checkRegion(region)
	ids := checkDesktopIDs(&v, msg.GetDesktopIds())
	concurrency := s.fleetConcurrency
	if n := msg.GetMaxConcurrency(); n < 0 {
		v.add("max_concurrency", "must not be negative (0 is the gateway's default)")
	} else if n > 0 {
		concurrency = min(int(n), concurrency)
	}
	var st *fleetState
	scope := ""
	if len(v) == 0 {
		scope = fleetScope(region, ids)
		var err error
		if st, err = decodeFleetToken(s.tokens, scope, len(ids), msg.GetPageToken()); err != nil {
			v.add("page_token", err.Error())
		}
	}
	if err := v.err(); err != nil {
		return err
	}
	span := trace.SpanFromContext(ctx)
	span.SetAttributes(semconv.CloudRegion(region), attribute.Int("ecd.fleet.desktops", len(ids)),
		attribute.Int("ecd.fleet.concurrency", concurrency))
	s.metrics.activeStreams.Add(ctx, 1)
	defer s.metrics.activeStreams.Add(context.WithoutCancel(ctx), -1)
	stats := upstream.CallStatsFrom(ctx)
	if stats == nil {
		stats = &upstream.CallStats{}
		ctx = upstream.WithCallStats(ctx, stats)
	}
	f := &fleet{s: s, region: region, ids: ids, scope: scope, st: st, stream: stream, stats: stats, callsBefore: st.calls}
	return f.run(ctx, concurrency)
}

// checkDesktopIDs validates desktop_ids and returns them sorted and
// de-duplicated.
func checkDesktopIDs(v *violations, ids []string) []string {
	if len(ids) == 0 {
		v.add("desktop_ids", "required: 1 to 1000 desktop ids, e.g. ecd-bd53sfmysz8ir0001")
		return nil
	}
	bad := 0
	for i, id := range ids {
		if desktopPattern.MatchString(id) {
			continue
		}
		if bad++; bad <= maxReportedIDs {
			v.add("desktop_ids["+strconv.Itoa(i)+"]", `must be an ECD desktop id: "ecd-" and up to 60 lower-case letters or digits`)
		}
	}
	if bad > maxReportedIDs {
		v.add("desktop_ids", strconv.Itoa(bad-maxReportedIDs)+" more ids are not ECD desktop ids")
	}
	if bad > 0 {
		return nil
	}
	sorted := slices.Compact(slices.Sorted(slices.Values(ids)))
	if len(sorted) > MaxFleetDesktops {
		v.add("desktop_ids", strconv.Itoa(len(sorted))+" distinct ids; at most 1000 per call")
		return nil
	}
	return sorted
}

// maxReportedIDs bounds the field violations of one request's bad ids.
const maxReportedIDs = 10

// fleet is one StreamFleetImageModifiedRecords call.
type fleet struct {
	s      *Service
	region string
	ids    []string
	scope  string
	st     *fleetState
	stream *connect.ServerStream[imagerecordsv1.StreamFleetImageModifiedRecordsResponse]
	// stats counts the call's upstream attempts; callsBefore those of the
	// calls it resumes.
	stats       *upstream.CallStats
	callsBefore int64
}

// fleetPage is a worker's page of desktop index, or the error that ended
// the desktop.
type fleetPage struct {
	index int
	page  *upstream.Page
	err   error
}

func (f *fleet) run(ctx context.Context, concurrency int) error {
	// Desktops whose every record was sent only lack their done message.
	for _, i := range slices.Sorted(maps.Keys(f.st.progress)) {
		if f.st.progress[i].finished {
			if err := f.finish(ctx, i, nil); err != nil {
				return err
			}
		}
	}
	// Desktops in progress continue first, then the ones not begun, in
	// the order of the sorted ids.
	var queue []int
	for _, i := range slices.Sorted(maps.Keys(f.st.progress)) {
		queue = append(queue, i)
	}
	for i := range f.ids {
		if !f.st.isFinished(i) && f.st.progress[i] == nil {
			queue = append(queue, i)
		}
	}
	start := make(map[int]upstream.Cursor, len(f.st.progress))
	for i, p := range f.st.progress {
		start[i] = p.cursor
	}

	ctx, cancel := context.WithCancel(ctx)
	pages := make(chan fleetPage) // unbuffered: a page waits in its worker
	var wg sync.WaitGroup
	var next atomic.Int64
	for range min(concurrency, len(queue)) {
		wg.Go(func() {
			for {
				k := int(next.Add(1)) - 1
				if k >= len(queue) || !f.page(ctx, queue[k], start[queue[k]], pages) {
					return
				}
			}
		})
	}
	go func() {
		wg.Wait()
		close(pages)
	}()
	defer func() {
		cancel()
		for range pages { // let every worker see the cancellation and end
		}
	}()
	for p := range pages {
		if err := f.deliver(ctx, p); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return f.s.toConnectError(ctx, err)
	}
	if !f.st.complete() {
		return connect.NewError(connect.CodeInternal, errors.New("fleet ended with desktops unfinished")) // every worker drains its queue
	}
	return f.send(ctx, &imagerecordsv1.StreamFleetImageModifiedRecordsResponse{
		Event: &imagerecordsv1.StreamFleetImageModifiedRecordsResponse_Summary{Summary: &imagerecordsv1.FleetSummary{
			Desktops:       int32(f.st.desktops),
			DesktopsOk:     int32(f.st.ok),
			DesktopsFailed: int32(f.st.failed),
			Records:        f.st.records,
			UpstreamCalls:  f.calls(),
		}},
	})
}

// page pages desktop i from cursor c into pages, under its own span, and
// reports whether the worker should go on (false once ctx is done).
func (f *fleet) page(ctx context.Context, i int, c upstream.Cursor, pages chan<- fleetPage) bool {
	ctx, span := f.s.tracer.Start(ctx, "fleet desktop", trace.WithAttributes(
		semconv.CloudRegion(f.region), attribute.String("ecd.desktop_id", f.ids[i])))
	defer span.End()
	f.s.metrics.fleetActive.Add(ctx, 1)
	defer f.s.metrics.fleetActive.Add(context.WithoutCancel(ctx), -1)
	in := upstream.DescribeInput{RegionID: f.region, DesktopID: f.ids[i], NextToken: c.Token}
	records := 0
	for page, err := range upstream.Pages(ctx, f.s.api, in, upstream.Skip(c.Skip), upstream.Prefetch()) {
		if err != nil {
			span.SetStatus(codes.Error, errorReason(err))
			span.SetAttributes(attribute.Int("ecd.fleet.records", records))
			select {
			case pages <- fleetPage{index: i, err: err}:
				return true
			case <-ctx.Done():
				return false
			}
		}
		records += len(page.Records)
		select {
		case pages <- fleetPage{index: i, page: page}:
		case <-ctx.Done():
			return false
		}
	}
	span.SetAttributes(attribute.Int("ecd.fleet.records", records))
	return true
}

// deliver sends what a worker handed over and records it in the state.
func (f *fleet) deliver(ctx context.Context, p fleetPage) error {
	if p.err != nil {
		if fleetWide(ctx, p.err) {
			return f.s.toConnectError(ctx, p.err)
		}
		return f.finish(ctx, p.index, p.err)
	}
	prog := f.st.progress[p.index]
	if prog == nil {
		prog = &fleetProgress{}
	}
	last := p.page.Resume == upstream.Cursor{}
	if len(p.page.Records) > 0 {
		f.st.progress[p.index] = prog
		prog.records += int64(len(p.page.Records))
		prog.cursor, prog.finished = p.page.Resume, last
		f.st.records += int64(len(p.page.Records))
		err := f.send(ctx, &imagerecordsv1.StreamFleetImageModifiedRecordsResponse{
			Event: &imagerecordsv1.StreamFleetImageModifiedRecordsResponse_DesktopRecords{DesktopRecords: &imagerecordsv1.FleetDesktopRecords{
				DesktopId:  f.ids[p.index],
				Records:    convertRecords(p.page.Records),
				TotalCount: int32(p.page.TotalCount),
				RequestId:  p.page.RequestID,
			}},
		})
		if err != nil {
			return err
		}
		f.s.metrics.pages.Add(ctx, 1, methodFleet)
		f.s.metrics.records.Add(ctx, int64(len(p.page.Records)), methodFleet)
	}
	// An empty page that is not the last sends nothing: the next page's
	// message carries the desktop's position.
	if last {
		return f.finish(ctx, p.index, nil)
	}
	return nil
}

// finish ends desktop i with FleetDesktopDone, or with FleetDesktopError
// for err.
func (f *fleet) finish(ctx context.Context, i int, err error) error {
	var records int64
	if p := f.st.progress[i]; p != nil {
		records = p.records
	}
	f.st.finish(i, err == nil)
	out := &imagerecordsv1.StreamFleetImageModifiedRecordsResponse{}
	if err == nil {
		f.s.metrics.fleetDesktops.Add(ctx, 1, outcomeOK)
		out.Event = &imagerecordsv1.StreamFleetImageModifiedRecordsResponse_DesktopDone{DesktopDone: &imagerecordsv1.FleetDesktopDone{
			DesktopId: f.ids[i], Records: records,
		}}
	} else {
		f.s.metrics.fleetDesktops.Add(ctx, 1, outcomeFailed)
		desktopErr := f.s.desktopError(ctx, err)
		desktopErr.DesktopId, desktopErr.Records = f.ids[i], records
		out.Event = &imagerecordsv1.StreamFleetImageModifiedRecordsResponse_DesktopError{DesktopError: desktopErr}
	}
	return f.send(ctx, out)
}

// send sends out with the token of the state now. The summary's token has
// every desktop finished: a call with it sends the summary alone.
func (f *fleet) send(ctx context.Context, out *imagerecordsv1.StreamFleetImageModifiedRecordsResponse) error {
	f.st.calls = f.calls()
	out.ResumeToken = encodeFleetToken(f.s.tokens, f.scope, f.st)
	if err := f.stream.Send(out); err != nil {
		if ctx.Err() != nil {
			return f.s.toConnectError(ctx, ctx.Err())
		}
		return err
	}
	return nil
}

// calls counts the upstream attempts of this call and those it resumes.
func (f *fleet) calls() int64 { return f.callsBefore + f.stats.Calls.Load() }

// fleetWide reports whether err concerns the whole call rather than one
// desktop: the caller gave up, the region is not served, or the gateway's
// own credentials or signature are at fault. Such an error ends the
// stream; any other ends one desktop.
func fleetWide(ctx context.Context, err error) bool {
	if ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, upstream.ErrNoCredentials) {
		return true
	}
	if apiErr, ok := errors.AsType[*upstream.APIError](err); ok {
		switch apiErr.Kind() {
		case upstream.KindGatewayCredentials, upstream.KindGatewaySignature:
			return true
		}
		return apiErr.Code == "InvalidRegionId" || strings.HasPrefix(apiErr.Code, "Missing")
	}
	return false
}

// desktopError describes err as StreamImageModifiedRecords would report it
// for one desktop: its code, message, ErrorInfo and RetryInfo delay.
func (s *Service) desktopError(ctx context.Context, err error) *imagerecordsv1.FleetDesktopError {
	out := &imagerecordsv1.FleetDesktopError{Code: imagerecordsv1.ErrorCode_ERROR_CODE_UNKNOWN, Message: err.Error()}
	cerr, ok := errors.AsType[*connect.Error](s.toConnectError(ctx, err))
	if !ok {
		return out
	}
	out.Code = imagerecordsv1.ErrorCode(cerr.Code())
	out.Message = cerr.Message()
	for _, d := range cerr.Details() {
		switch v, _ := d.Value(); v := v.(type) {
		case *errdetails.ErrorInfo:
			out.ErrorInfo = &imagerecordsv1.ErrorInfo{Reason: v.GetReason(), Domain: v.GetDomain(), Metadata: v.GetMetadata()}
		case *errdetails.RetryInfo:
			out.RetryDelay = durationpb.New(max(v.GetRetryDelay().AsDuration(), time.Millisecond))
		}
	}
	return out
}

// errorReason names err for a span status: the upstream Code, or the
// error's text.
func errorReason(err error) string {
	if apiErr, ok := errors.AsType[*upstream.APIError](err); ok && apiErr.Code != "" {
		return apiErr.Code
	}
	return err.Error()
}
