package gateway

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"connectrpc.com/connect"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/upstream"
)

// accessLog writes one line per RPC: the caller (peer and bearer token
// id, never the token), method, protocol, code, duration, records
// delivered and upstream calls made; for a fleet, how many desktops it
// asked for and how many ended done or failed (counts, never ids). It runs inside the tracing
// interceptor, so the line carries the RPC's trace_id.
type accessLog struct{ logger *slog.Logger }

func (a accessLog) interceptor() connect.Interceptor {
	return handlerInterceptor{unary: a.wrapUnary, stream: a.wrapStream}
}

func (a accessLog) wrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		var stats upstream.CallStats
		start := time.Now()
		res, err := next(upstream.WithCallStats(ctx, &stats), req)
		records, messages := 0, 0
		if err == nil {
			messages = 1
			if m, ok := res.Any().(*imagerecordsv1.ListImageModifiedRecordsResponse); ok {
				records = len(m.GetRecords())
			}
		}
		a.log(ctx, req.Spec(), req.Peer().Protocol, start, err, &countingConn{records: records, messages: messages}, &stats)
		return res, err
	}
}

func (a accessLog) wrapStream(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		var stats upstream.CallStats
		start := time.Now()
		counted := &countingConn{StreamingHandlerConn: conn}
		err := next(upstream.WithCallStats(ctx, &stats), counted)
		a.log(ctx, conn.Spec(), conn.Peer().Protocol, start, err, counted, &stats)
		return err
	}
}

// countingConn counts what a stream sends, and the desktops a fleet asks
// for.
type countingConn struct {
	connect.StreamingHandlerConn
	records, messages int
	// desktops is the desktop ids of a fleet request (0 for other calls);
	// done and failed count its desktops that ended so far.
	desktops, done, failed int
}

func (c *countingConn) Receive(msg any) error {
	err := c.StreamingHandlerConn.Receive(msg)
	if m, ok := msg.(*imagerecordsv1.StreamFleetImageModifiedRecordsRequest); ok && err == nil {
		c.desktops = len(m.GetDesktopIds())
	}
	return err
}

func (c *countingConn) Send(msg any) error {
	if err := c.StreamingHandlerConn.Send(msg); err != nil {
		return err
	}
	c.messages++
	switch m := msg.(type) {
	case *imagerecordsv1.StreamImageModifiedRecordsResponse:
		c.records += len(m.GetRecords())
	case *imagerecordsv1.StreamFleetImageModifiedRecordsResponse:
		c.records += len(m.GetDesktopRecords().GetRecords())
		if m.GetDesktopDone() != nil {
			c.done++
		}
		if m.GetDesktopError() != nil {
			c.failed++
		}
	case *imagerecordsv1.WatchImageModifiedRecordsResponse:
		c.records += len(m.GetSnapshot().GetRecords())
		if m.GetRecordAdded() != nil || m.GetStatusChanged() != nil {
			c.records++
		}
	}
	return nil
}

func (a accessLog) log(ctx context.Context, spec connect.Spec, protocol string, start time.Time, err error, counts *countingConn, stats *upstream.CallStats) {
	code, level := "ok", slog.LevelInfo
	attrs := make([]slog.Attr, 0, 15)
	if err != nil {
		c := connect.CodeOf(err)
		code = c.String()
		switch c {
		case connect.CodeInternal, connect.CodeUnknown, connect.CodeDataLoss:
			level = slog.LevelError
		case connect.CodeUnavailable, connect.CodeDeadlineExceeded:
			level = slog.LevelWarn
		}
		msg := err.Error()
		if cerr, ok := errors.AsType[*connect.Error](err); ok {
			msg = cerr.Message()
		}
		attrs = append(attrs, slog.String("error", msg))
	}
	who := callerFrom(ctx)
	attrs = append(attrs, slog.String("peer", who.peer))
	if who.tokenID != "" {
		attrs = append(attrs, slog.String("token_id", who.tokenID))
	}
	attrs = append(attrs,
		slog.String("procedure", spec.Procedure),
		slog.String("protocol", protocol),
		slog.String("code", code),
		slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
		slog.Int("records", counts.records),
		slog.Int("messages", counts.messages),
		slog.Int64("upstream_calls", stats.Calls.Load()),
		slog.Int64("upstream_retries", stats.Retries.Load()),
	)
	if counts.desktops > 0 {
		attrs = append(attrs, slog.Int("desktops", counts.desktops), slog.Int("desktops_done", counts.done), slog.Int("desktops_failed", counts.failed))
	}
	a.logger.LogAttrs(ctx, level, "rpc", attrs...)
}
