package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync/atomic"

	"connectrpc.com/connect"
)

// bearerAuth admits an RPC only with "Authorization: Bearer <token>" for a
// token of the tokens file (one per line; blank lines and lines starting
// with # are ignored). Tokens are compared in constant time, against every
// token, so neither the answer nor its timing tells how close a guess was.
// The file is read again by reload (on SIGHUP); a failed reload keeps the
// tokens in force, and RPCs in flight are never affected.
type bearerAuth struct {
	path   string
	digest atomic.Pointer[[][sha256.Size]byte] // SHA-256 of each token
}

// errUnauthenticated is all a refused caller learns.
var errUnauthenticated = errors.New("missing or invalid bearer token")

func newBearerAuth(path string) (*bearerAuth, error) {
	a := &bearerAuth{path: path}
	if err := a.reload(); err != nil {
		return nil, err
	}
	return a, nil
}

// reload reads the tokens file and, if it is valid, puts its tokens in force.
func (a *bearerAuth) reload() error {
	data, err := os.ReadFile(a.path)
	if err != nil {
		return fmt.Errorf("reading the auth tokens file: %w", err)
	}
	var digests [][sha256.Size]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		digests = append(digests, sha256.Sum256([]byte(line)))
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading the auth tokens file: %w", err)
	}
	if len(digests) == 0 {
		return fmt.Errorf("the auth tokens file %s has no tokens", a.path)
	}
	a.digest.Store(&digests)
	return nil
}

// tokens reports how many tokens are in force.
func (a *bearerAuth) tokens() int { return len(*a.digest.Load()) }

func (a *bearerAuth) admits(h http.Header) bool {
	token, ok := strings.CutPrefix(h.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return false
	}
	// Comparing fixed-size digests keeps the comparison's time independent
	// of the token's length and content.
	got := sha256.Sum256([]byte(token))
	match := 0
	for _, want := range *a.digest.Load() {
		match |= subtle.ConstantTimeCompare(got[:], want[:])
	}
	return match == 1
}

// interceptor refuses RPCs without an admitted token.
func (a *bearerAuth) interceptor() connect.Interceptor {
	return handlerInterceptor{
		unary: func(next connect.UnaryFunc) connect.UnaryFunc {
			return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
				if !a.admits(req.Header()) {
					return nil, connect.NewError(connect.CodeUnauthenticated, errUnauthenticated)
				}
				return next(ctx, req)
			}
		},
		stream: func(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
			return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
				if !a.admits(conn.RequestHeader()) {
					return connect.NewError(connect.CodeUnauthenticated, errUnauthenticated)
				}
				return next(ctx, conn)
			}
		},
	}
}
