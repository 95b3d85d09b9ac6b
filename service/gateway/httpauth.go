package gateway

import (
	"log/slog"
	"net/http"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
)

// healthCheckProcedure is the one procedure served without a bearer
// token: probes of Kubernetes and of the mesh call it and hold no token.
// Health Watch, a stream, needs one when tokens are on.
const healthCheckProcedure = "/" + grpchealth.HealthV1ServiceName + "/Check"

// front is the gateway's first HTTP layer, before any body is read or
// decompressed: with Config.AuthTokensFile it refuses a request without an
// admitted bearer token (every procedure but health Check), then it names
// the caller (peer identity, token id) for the limits and logs behind it.
type front struct {
	auth     *bearerAuth // nil: no token needed
	peers    peerIdentity
	refusals *refusalLog
	errors   *connect.ErrorWriter
	next     http.Handler
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := caller{remote: r.RemoteAddr}
	if f.auth != nil && r.URL.Path != healthCheckProcedure {
		id, ok := f.auth.admits(r.Header)
		if !ok {
			peer := f.peers.of(r, "")
			f.refusals.record(r.Context(), reasonUnauthenticated, peer, r.RemoteAddr, slog.String("procedure", r.URL.Path))
			refuse(w, r, f.errors, connect.NewError(connect.CodeUnauthenticated, errUnauthenticated))
			return
		}
		c.tokenID = id
	}
	c.peer = f.peers.of(r, c.tokenID)
	f.next.ServeHTTP(w, r.WithContext(withCaller(r.Context(), c)))
}

// refuse answers r with err in its RPC protocol, without reading its body.
// An HTTP/1.1 connection is closed after the answer rather than read to the
// end of the unread body.
func refuse(w http.ResponseWriter, r *http.Request, errs *connect.ErrorWriter, err error) {
	if r.ProtoMajor == 1 && r.ContentLength != 0 {
		w.Header().Set("Connection", "close")
	}
	_ = errs.Write(w, r, err)
}
