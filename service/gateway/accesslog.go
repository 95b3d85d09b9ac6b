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
// delivered and upstream calls made. It runs inside the tracing
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
		a.log(ctx, req.Spec(), req.Peer().Protocol, start, err, records, messages, &stats)
		return res, err
	}
}

func (a accessLog) wrapStream(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		var stats upstream.CallStats
		start := time.Now()
		counted := &countingConn{StreamingHandlerConn: conn}
		err := next(upstream.WithCallStats(ctx, &stats), counted)
		a.log(ctx, conn.Spec(), conn.Peer().Protocol, start, err, counted.records, counted.messages, &stats)
		return err
	}
}

// countingConn counts what a stream sends.
type countingConn struct {
	connect.StreamingHandlerConn
	records, messages int
}

func (c *countingConn) Send(msg any) error {
	if err := c.StreamingHandlerConn.Send(msg); err != nil {
		return err
	}
	c.messages++
	if m, ok := msg.(*imagerecordsv1.StreamImageModifiedRecordsResponse); ok {
		c.records += len(m.GetRecords())
	}
	return nil
}

func (a accessLog) log(ctx context.Context, spec connect.Spec, protocol string, start time.Time, err error, records, messages int, stats *upstream.CallStats) {
	code, level := "ok", slog.LevelInfo
	attrs := make([]slog.Attr, 0, 12)
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
		slog.Int("records", records),
		slog.Int("messages", messages),
		slog.Int64("upstream_calls", stats.Calls.Load()),
		slog.Int64("upstream_retries", stats.Retries.Load()),
	)
	a.logger.LogAttrs(ctx, level, "rpc", attrs...)
}
