package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
)

// Cache-Control values of the service's responses.
const (
	// cacheNoStore is the Cache-Control of every response but a successful
	// Connect GET of ListImageModifiedRecords with --list-cache-max-age
	// set: POST and streaming responses carry page tokens and upstream
	// request ids that no cache can hand to a later request, and errors
	// must not outlive the cause.
	cacheNoStore = "no-store"
)

// listCaching gives Connect GET answers of ListImageModifiedRecords cache
// validators, so that a dashboard that polls a page costs its caller
// nothing when the page did not change: an ETag computed from the answer,
// a 304 Not Modified without a body when the request's If-None-Match
// holds it, and Cache-Control: private, max-age=N with
// --list-cache-max-age N (no-store with 0, the default). The gateway still
// asks the upstream on every request (the upstream has no validators of
// its own), so a 304 saves the response's bytes and the caller's decoding,
// not the upstream call; a cache's max-age is what saves calls.
//
// The answer varies by Authorization: a browser's cache does not hand an
// answer fetched with one bearer token to a request with another, or
// with none. Every other response of the service (POST, streams, errors)
// carries Cache-Control: no-store.
//
// The ETag is weak (W/"..."): it is the same for answers that differ only
// in request_id, which the upstream sets anew for every call, so two
// answers with the same tag are equal in every record, token and count but
// not byte for byte. If-None-Match compares weakly, so this is what makes
// a 304 possible at all. Every replica computes the same tag for the same
// answer (page tokens are the same on every replica with one
// --token-key-file).
type listCaching struct {
	// control is the Cache-Control of a successful GET.
	control string
}

func newListCaching(maxAge time.Duration) listCaching {
	if maxAge <= 0 {
		return listCaching{control: cacheNoStore}
	}
	return listCaching{control: "private, max-age=" + strconv.FormatInt(int64(maxAge/time.Second), 10)}
}

// name is the interceptor's name in [Gateway.Chain].
func (l listCaching) name() string { return "cache-control(list-get: " + l.control + ")" }

// interceptor sets the validators and Cache-Control of the service's
// answers. It must run outside the tracing and access-log interceptors:
// connect-go turns the 304 into its answer from an error, which they
// would count as a failed call.
func (l listCaching) interceptor() connect.Interceptor {
	return handlerInterceptor{unary: l.wrapUnary, stream: wrapStreamNoStore}
}

func (l listCaching) wrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		if err != nil {
			if cerr, ok := errors.AsType[*connect.Error](err); ok && req.Peer().Protocol == connect.ProtocolConnect {
				// Connect unary errors carry their metadata as HTTP headers;
				// in gRPC and gRPC-Web it would become a trailer.
				cerr.Meta().Set("Cache-Control", cacheNoStore)
			}
			return res, err
		}
		page, ok := res.Any().(*imagerecordsv1.ListImageModifiedRecordsResponse)
		if req.HTTPMethod() != http.MethodGet || !ok || req.Spec().Procedure != imagerecordsv1connect.ImageRecordsServiceListImageModifiedRecordsProcedure {
			res.Header().Set("Cache-Control", cacheNoStore)
			return res, nil
		}
		etag := listETag(page, req.Peer().Query.Get("encoding"))
		validators := http.Header{"Etag": {etag}, "Cache-Control": {l.control}, "Vary": {"Authorization"}}
		if etagMatches(req.Header().Values("If-None-Match"), etag) {
			return nil, connect.NewNotModifiedError(validators)
		}
		for k, v := range validators {
			res.Header()[k] = append(res.Header()[k], v...)
		}
		return res, nil
	}
}

// wrapStreamNoStore marks streaming responses as not to be stored.
func wrapStreamNoStore(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		conn.ResponseHeader().Set("Cache-Control", cacheNoStore)
		return next(ctx, conn)
	}
}

// listETag is the weak entity tag of a page in an encoding: a hash of its
// deterministic wire form without request_id.
func listETag(page *imagerecordsv1.ListImageModifiedRecordsResponse, encoding string) string {
	page = proto.CloneOf(page)
	page.RequestId = ""
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(page) // a valid message always marshals
	h := sha256.New()
	h.Write([]byte("imagerecords.list.v1\x00" + encoding + "\x00"))
	h.Write(b)
	return `W/"` + base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:16]) + `"`
}

// etagMatches reports whether the If-None-Match header values name etag,
// compared weakly (RFC 9110, section 13.1.2), or are "*".
func etagMatches(ifNoneMatch []string, etag string) bool {
	want := strings.TrimPrefix(etag, "W/")
	for _, v := range ifNoneMatch {
		for tag := range strings.SplitSeq(v, ",") {
			tag = strings.TrimSpace(tag)
			if tag == "*" || strings.TrimPrefix(tag, "W/") == want {
				return true
			}
		}
	}
	return false
}
