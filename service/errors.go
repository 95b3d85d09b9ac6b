package service

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/imagerecords/imagerecords/upstream"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of errors that the
// upstream reported; ErrorInfo.reason is then the upstream error Code.
const ErrorDomain = "ecd.aliyuncs.com"

// GatewayErrorDomain is the ErrorInfo domain of errors the gateway found
// itself (a broken token sequence, a malformed upstream answer).
const GatewayErrorDomain = "imagerecords.gateway"

// retryAfter is what RetryInfo suggests after throttling or an upstream
// outage that outlasted the gateway's own retries.
const retryAfter = time.Second

// toConnectError maps an error of the upstream client to a Connect error
// for the caller. Upstream messages reach the caller only for errors about
// the caller's request or about availability; errors about the gateway's
// own credentials or signatures get a fixed message, because the upstream
// may quote the string to sign (which can carry an STS token) in them.
func (s *Service) toConnectError(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(ctxErr, context.DeadlineExceeded) {
			return connect.NewError(connect.CodeDeadlineExceeded, errors.New("deadline exceeded while calling the upstream"))
		}
		return connect.NewError(connect.CodeCanceled, errors.New("request canceled"))
	}
	if apiErr, ok := errors.AsType[*upstream.APIError](err); ok {
		return s.fromAPIError(ctx, apiErr)
	}
	switch {
	case isType[*upstream.UnknownRegionError](err):
		// A region with no ECD endpoint (a typo such as cn-hangzou) is the
		// caller's mistake, not an outage: no RetryInfo.
		regionErr, _ := errors.AsType[*upstream.UnknownRegionError](err)
		var v violations
		v.add("region_id", "region "+strconv.Quote(regionErr.Region)+" has no ECD endpoint ("+regionErr.Host+" does not resolve); use an ECD region id such as cn-hangzhou")
		return v.err()
	case isType[*upstream.PaginationError](err):
		s.logger.LogAttrs(ctx, slog.LevelError, "upstream pagination broken", slog.String("error", err.Error()))
		return withInfo(connect.NewError(connect.CodeInternal, err), GatewayErrorDomain, "UPSTREAM_TOKEN_REPEATED", nil)
	case isType[*upstream.EmptyPagesError](err):
		s.logger.LogAttrs(ctx, slog.LevelError, "upstream pagination broken", slog.String("error", err.Error()))
		return withInfo(connect.NewError(connect.CodeInternal, err), GatewayErrorDomain, "UPSTREAM_EMPTY_PAGES", nil)
	case errors.Is(err, upstream.ErrMalformedResponse):
		s.logger.LogAttrs(ctx, slog.LevelError, "malformed upstream response", slog.String("error", err.Error()))
		return withInfo(connect.NewError(connect.CodeInternal, err), GatewayErrorDomain, "UPSTREAM_RESPONSE_MALFORMED", nil)
	case errors.Is(err, upstream.ErrNoCredentials):
		s.logger.LogAttrs(ctx, slog.LevelError, "no upstream credentials", slog.String("error", err.Error()))
		return withInfo(connect.NewError(connect.CodeInternal, errors.New("the gateway has no usable Alibaba Cloud credentials; its operator must configure them")),
			GatewayErrorDomain, "GATEWAY_CREDENTIALS_MISSING", nil)
	}
	s.logger.LogAttrs(ctx, slog.LevelWarn, "upstream unreachable", slog.String("error", err.Error()))
	cerr := connect.NewError(connect.CodeUnavailable, errors.New("the upstream ECD endpoint could not be reached"))
	return withRetry(withInfo(cerr, GatewayErrorDomain, "UPSTREAM_UNREACHABLE", nil))
}

func (s *Service) fromAPIError(ctx context.Context, e *upstream.APIError) error {
	meta := map[string]string{"http_status": strconv.Itoa(e.HTTPStatus)}
	if e.RequestID != "" {
		meta["upstream_request_id"] = e.RequestID
	}
	if e.Recommend != "" {
		meta["recommend"] = e.Recommend
	}
	reason := e.Code
	if reason == "" {
		reason = "HTTP_" + strconv.Itoa(e.HTTPStatus)
	}
	logAttrs := []slog.Attr{slog.String("code", e.Code), slog.Int("http_status", e.HTTPStatus), slog.String("upstream_request_id", e.RequestID)}
	var cerr *connect.Error
	switch e.Kind() {
	case upstream.KindThrottled:
		delay := retryAfter
		if hint, ok := e.ThrottlingHint(); ok {
			delay = max(hint, time.Millisecond)
		}
		cerr = withRetryAfter(connect.NewError(connect.CodeUnavailable, errors.New("the upstream is throttling the gateway ("+e.Code+"); retry later")), delay)
	case upstream.KindUnavailable:
		cerr = withRetry(connect.NewError(connect.CodeUnavailable, errors.New("the upstream is unavailable ("+reason+"); retry later")))
	case upstream.KindGatewayCredentials:
		s.logger.LogAttrs(ctx, slog.LevelError, "upstream rejected the gateway's credentials", logAttrs...)
		cerr = connect.NewError(connect.CodeInternal, errors.New("the upstream rejected the gateway's credentials ("+e.Code+"); the gateway's operator must fix them"))
	case upstream.KindGatewaySignature:
		s.logger.LogAttrs(ctx, slog.LevelError, "upstream rejected the gateway's signature (check the gateway's clock and signing)", logAttrs...)
		cerr = connect.NewError(connect.CodeInternal, errors.New("the upstream rejected the gateway's request signature ("+e.Code+"); this is a gateway fault, not the caller's"))
	case upstream.KindPermissionDenied:
		cerr = connect.NewError(connect.CodePermissionDenied, errors.New("the gateway's Alibaba Cloud identity may not read this desktop ("+e.Code+"): "+e.Message))
	case upstream.KindInvalidArgument:
		cerr = connect.NewError(connect.CodeInvalidArgument, errors.New("the upstream rejected the request ("+e.Code+"): "+e.Message))
	case upstream.KindNotFound:
		cerr = connect.NewError(connect.CodeNotFound, errors.New("not found upstream ("+e.Code+"): "+e.Message))
	default:
		s.logger.LogAttrs(ctx, slog.LevelError, "unexpected upstream error", logAttrs...)
		cerr = connect.NewError(connect.CodeInternal, errors.New("unexpected upstream error ("+reason+")"))
	}
	return withInfo(cerr, ErrorDomain, reason, meta)
}

// isType reports whether err's chain holds an error of type E.
func isType[E error](err error) bool {
	_, ok := errors.AsType[E](err)
	return ok
}

func withInfo(cerr *connect.Error, domain, reason string, meta map[string]string) *connect.Error {
	if d, err := connect.NewErrorDetail(&errdetails.ErrorInfo{Domain: domain, Reason: reason, Metadata: meta}); err == nil {
		cerr.AddDetail(d)
	}
	return cerr
}

func withRetry(cerr *connect.Error) *connect.Error { return withRetryAfter(cerr, retryAfter) }

// withRetryAfter adds a RetryInfo suggesting delay.
func withRetryAfter(cerr *connect.Error, delay time.Duration) *connect.Error {
	if d, err := connect.NewErrorDetail(&errdetails.RetryInfo{RetryDelay: durationpb.New(delay)}); err == nil {
		cerr.AddDetail(d)
	}
	return cerr
}
