package service

import (
	"context"
	"errors"
	"log/slog"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/upstream"
)

// Service implements [imagerecordsv1connect.ImageRecordsServiceHandler].
type Service struct {
	api            upstream.API
	logger         *slog.Logger
	meterProvider  metric.MeterProvider
	metrics        instruments
	tracerProvider trace.TracerProvider
	tracer         trace.Tracer
	// tokens seal and open every token the service hands out.
	tokens *TokenKeys
	// fleetConcurrency is the default and cap of a fleet's max_concurrency.
	fleetConcurrency int
	// watch is the shared pollers of WatchImageModifiedRecords.
	watch *watchHub
	// watchClock and watchIntervals configure the watch pollers.
	watchClock     Clock
	watchIntervals WatchIntervals
}

var _ imagerecordsv1connect.ImageRecordsServiceHandler = (*Service)(nil)

// Option configures a [Service].
type Option func(*Service)

// WithLogger sets the logger for gateway-side faults. Default: discard.
func WithLogger(l *slog.Logger) Option {
	return func(s *Service) { s.logger = l }
}

// WithTracerProvider sets where the spans of fleet desktops and watch polls
// go. Default: the global OTel tracer provider.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(s *Service) { s.tracerProvider = tp }
}

// WithTokenKeys sets the keys that seal and open page and resume tokens.
// Every replica behind one address needs the same keys, so that a token
// one of them issued opens on any other. Default: a random key of this
// process ([RandomTokenKeys]).
func WithTokenKeys(k *TokenKeys) Option {
	return func(s *Service) { s.tokens = k }
}

// New returns a service that reads records through api.
func New(api upstream.API, opts ...Option) *Service {
	s := &Service{
		api:              api,
		logger:           slog.New(slog.DiscardHandler),
		meterProvider:    defaultMeterProvider(),
		tracerProvider:   otel.GetTracerProvider(),
		fleetConcurrency: DefaultFleetConcurrency,
		watchClock:       realClock{},
		watchIntervals:   DefaultWatchIntervals(),
	}
	for _, opt := range opts {
		opt(s)
	}
	if s.tokens == nil {
		s.tokens = RandomTokenKeys()
	}
	s.metrics = newInstruments(s.meterProvider)
	s.tracer = s.tracerProvider.Tracer(instrumentationName)
	s.watch = newWatchHub(s)
	return s
}

// ListImageModifiedRecords returns one page of up to page_size records.
// A page_token from a stream cut by max_records points into an upstream
// page: the call asks for the records before the position too, and
// upstream.Pages leaves them out.
func (s *Service) ListImageModifiedRecords(ctx context.Context, req *connect.Request[imagerecordsv1.ListImageModifiedRecordsRequest]) (*connect.Response[imagerecordsv1.ListImageModifiedRecordsResponse], error) {
	msg := req.Msg
	region, desktop := msg.GetRegionId(), msg.GetDesktopId()
	var v violations
	v.checkDesktop(region, desktop)
	pageSize := checkPageSize(&v, msg.GetPageSize())
	pos := v.checkToken(s.tokens, region, desktop, msg.GetPageToken())
	if err := v.err(); err != nil {
		return nil, err
	}
	annotate(ctx, region, desktop)
	in := upstream.DescribeInput{RegionID: region, DesktopID: desktop, NextToken: pos.Token}
	// A List's page goes before its own caller's queued stream pages.
	for page, err := range upstream.Pages(upstream.WithInteractive(ctx), s.api, in,
		upstream.PageSize(pageSize+pos.Skip), upstream.Skip(pos.Skip), upstream.Limit(pageSize)) {
		if err != nil {
			return nil, s.toConnectError(ctx, err)
		}
		s.metrics.pages.Add(ctx, 1, methodList)
		s.metrics.records.Add(ctx, int64(len(page.Records)), methodList)
		return connect.NewResponse(&imagerecordsv1.ListImageModifiedRecordsResponse{
			Records:       convertRecords(page.Records),
			NextPageToken: s.tokens.sealCursor(region, desktop, page.Resume),
			TotalCount:    int32(page.TotalCount),
			RequestId:     page.RequestID,
		}), nil // one upstream call: the first page is the answer
	}
	return nil, connect.NewError(connect.CodeInternal, errors.New("no upstream page")) // Pages yields at least once
}

// StreamImageModifiedRecords sends every record of a desktop, one message per
// upstream page. While one page is being sent the next is fetched, and no
// further: a slow caller slows the upstream paging (HTTP/2 flow control
// blocks Send once the caller's receive window is full), at most two pages
// are held in memory, and with max_records no page beyond the last needed
// one is asked for.
func (s *Service) StreamImageModifiedRecords(ctx context.Context, req *connect.Request[imagerecordsv1.StreamImageModifiedRecordsRequest], stream *connect.ServerStream[imagerecordsv1.StreamImageModifiedRecordsResponse]) error {
	msg := req.Msg
	region, desktop := msg.GetRegionId(), msg.GetDesktopId()
	var v violations
	v.checkDesktop(region, desktop)
	limit := checkMaxRecords(&v, msg.GetMaxRecords())
	pos := v.checkToken(s.tokens, region, desktop, msg.GetPageToken())
	if err := v.err(); err != nil {
		return err
	}
	annotate(ctx, region, desktop)
	s.metrics.activeStreams.Add(ctx, 1)
	defer s.metrics.activeStreams.Add(context.WithoutCancel(ctx), -1)
	in := upstream.DescribeInput{RegionID: region, DesktopID: desktop, NextToken: pos.Token}
	// Page k is written by the sender while this goroutine fetches page
	// k+1; page k+2 is asked for only once page k is written.
	sender := newMessageSender(stream)
	defer sender.wait() // no return leaves a write behind
	for page, err := range upstream.Pages(ctx, s.api, in, upstream.Skip(pos.Skip), upstream.Limit(limit)) {
		if err != nil {
			if sendErr := sender.wait(); sendErr != nil { // the earlier failure stands
				return s.sendFailed(ctx, sendErr)
			}
			return s.toConnectError(ctx, err)
		}
		// The message is built once the previous one is written: a stream
		// holds one message's proto records at a time.
		if err := sender.wait(); err != nil {
			return s.sendFailed(ctx, err)
		}
		block := recordBlocks.Get().(*recordBlock)
		out := &imagerecordsv1.StreamImageModifiedRecordsResponse{
			Records:     block.convert(page.Records),
			ResumeToken: s.tokens.sealCursor(region, desktop, page.Resume), // "" when nothing follows
			TotalCount:  int32(page.TotalCount),
			RequestId:   page.RequestID,
		}
		// Counted now, and the page's record list given back: out holds
		// what it needs (copies of the records' strings).
		records := int64(len(page.Records))
		page.Release()
		sender.start(out, func(err error) {
			block.release() // Send encoded out, and nothing keeps it
			if err == nil {
				s.metrics.pages.Add(ctx, 1, methodStream)
				s.metrics.records.Add(ctx, records, methodStream)
			}
		})
	}
	if err := sender.wait(); err != nil {
		return s.sendFailed(ctx, err)
	}
	return nil
}
