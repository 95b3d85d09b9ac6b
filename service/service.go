package service

import (
	"context"
	"log/slog"
	"math"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel/metric"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/upstream"
)

// Service implements [imagerecordsv1connect.ImageRecordsServiceHandler].
type Service struct {
	api           upstream.API
	logger        *slog.Logger
	meterProvider metric.MeterProvider
	metrics       instruments
}

var _ imagerecordsv1connect.ImageRecordsServiceHandler = (*Service)(nil)

// Option configures a [Service].
type Option func(*Service)

// WithLogger sets the logger for gateway-side faults. Default: discard.
func WithLogger(l *slog.Logger) Option {
	return func(s *Service) { s.logger = l }
}

// New returns a service that reads records through api.
func New(api upstream.API, opts ...Option) *Service {
	s := &Service{api: api, logger: slog.New(slog.DiscardHandler), meterProvider: defaultMeterProvider()}
	for _, opt := range opts {
		opt(s)
	}
	s.metrics = newInstruments(s.meterProvider)
	return s
}

// ListImageModifiedRecords returns one page of up to page_size records.
func (s *Service) ListImageModifiedRecords(ctx context.Context, req *connect.Request[imagerecordsv1.ListImageModifiedRecordsRequest]) (*connect.Response[imagerecordsv1.ListImageModifiedRecordsResponse], error) {
	msg := req.Msg
	var v violations
	v.checkDesktop(msg.GetRegionId(), msg.GetDesktopId())
	pageSize := checkPageSize(&v, msg.GetPageSize())
	pos := v.checkToken(msg.GetRegionId(), msg.GetDesktopId(), msg.GetPageToken())
	if err := v.err(); err != nil {
		return nil, err
	}
	annotate(ctx, msg.GetRegionId(), msg.GetDesktopId())
	// A token from a stream cut by max_records points into an upstream
	// page: ask for the records already delivered too, and drop them.
	in := upstream.DescribeInput{
		RegionID:   msg.GetRegionId(),
		DesktopID:  msg.GetDesktopId(),
		MaxResults: min(pageSize+pos.skip, upstream.MaxPageSize),
		NextToken:  pos.upstreamToken,
	}
	page, err := s.api.DescribeImageModifiedRecords(ctx, in)
	if err != nil {
		return nil, s.toConnectError(ctx, err)
	}
	if page.NextToken != "" && page.NextToken == pos.upstreamToken {
		return nil, s.toConnectError(ctx, &upstream.PaginationError{Page: 2, FirstSeen: 1})
	}
	records := page.Records[min(pos.skip, len(page.Records)):]
	next := position{upstreamToken: page.NextToken}
	if len(records) > pageSize { // the upstream sent more than asked
		records = records[:pageSize]
		next = position{upstreamToken: pos.upstreamToken, skip: pos.skip + pageSize}
	}
	s.metrics.pages.Add(ctx, 1, methodList)
	s.metrics.records.Add(ctx, int64(len(records)), methodList)
	return connect.NewResponse(&imagerecordsv1.ListImageModifiedRecordsResponse{
		Records:       convertRecords(records),
		NextPageToken: encodeToken(in.RegionID, in.DesktopID, next),
		TotalCount:    int32(page.TotalCount),
		RequestId:     page.RequestID,
	}), nil
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
	if msg.GetMaxRecords() < 0 {
		v.add("max_records", "must not be negative (0 streams every record)")
	}
	pos := v.checkToken(region, desktop, msg.GetPageToken())
	if err := v.err(); err != nil {
		return err
	}
	annotate(ctx, region, desktop)
	s.metrics.activeStreams.Add(ctx, 1)
	defer s.metrics.activeStreams.Add(context.WithoutCancel(ctx), -1)
	remaining := msg.GetMaxRecords() // 0: unlimited
	skip := pos.skip
	in := upstream.DescribeInput{RegionID: region, DesktopID: desktop, NextToken: pos.upstreamToken}
	paging := []upstream.PagesOption{upstream.Prefetch()}
	if remaining > 0 { // the records to skip come out of the first page
		paging = append(paging, upstream.Limit(int(min(remaining+int64(skip), math.MaxInt32))))
	}
	for page, err := range upstream.Pages(ctx, s.api, in, paging...) {
		if err != nil {
			return s.toConnectError(ctx, err)
		}
		delivered := min(skip, len(page.Records)) // of this page, by an earlier stream
		records := page.Records[delivered:]
		skip = 0
		resume := position{upstreamToken: page.NextToken}
		done := page.NextToken == ""
		if remaining > 0 && int64(len(records)) >= remaining {
			if int64(len(records)) > remaining {
				records = records[:remaining]
				resume = position{upstreamToken: page.Token, skip: delivered + int(remaining)}
			}
			done = true
		}
		remaining -= int64(len(records))
		out := &imagerecordsv1.StreamImageModifiedRecordsResponse{
			Records:     convertRecords(records),
			ResumeToken: encodeToken(region, desktop, resume), // "" when nothing follows
			TotalCount:  int32(page.TotalCount),
			RequestId:   page.RequestID,
		}
		if err := stream.Send(out); err != nil {
			if ctx.Err() != nil {
				return s.toConnectError(ctx, ctx.Err())
			}
			return err
		}
		s.metrics.pages.Add(ctx, 1, methodStream)
		s.metrics.records.Add(ctx, int64(len(records)), methodStream)
		if done {
			return nil
		}
	}
	return nil
}
