package gateway

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	connectcors "connectrpc.com/cors"
	"github.com/rs/cors"
)

// corsPreflightMaxAge is how long a browser may reuse a preflight's
// answer: two hours, the most Chromium honours. Without it a browser asks
// again every 5 seconds.
const corsPreflightMaxAge = 2 * time.Hour

// corsAllowedHeaders are the request headers a page may send: those of
// the Connect, gRPC-Web and compression protocols, the bearer token of
// --auth-tokens-file, the W3C trace context the gateway continues, and
// If-None-Match for pages that revalidate List answers themselves.
func corsAllowedHeaders() []string {
	return append(connectcors.AllowedHeaders(),
		"Authorization",
		"Connect-Accept-Encoding", "Connect-Content-Encoding", "Grpc-Accept-Encoding", "Grpc-Encoding",
		"Traceparent", "Tracestate",
		"If-None-Match",
	)
}

// corsExposedHeaders are the response headers a page may read: the gRPC
// status, message and details that gRPC-Web (and a trailers-only answer)
// carries in headers, and the ETag of List answers.
func corsExposedHeaders() []string {
	return append(connectcors.ExposedHeaders(), "Etag")
}

// withCORS lets pages of origins answer cross-origin calls: it answers
// CORS preflights itself, before the bearer-token check (a preflight
// carries no token) and before any other layer, and marks the answers of
// actual calls from origins as readable. With no origins (the default) it
// returns next: the gateway sends no CORS headers, and browsers refuse
// pages of other origins. A preflight from any other origin gets a 204
// without any Access-Control-Allow-* header, which the browser takes as a
// refusal. Credentials (cookies, TLS client certificates) are not
// allowed: the gateway authenticates browsers by the Authorization header
// only.
func withCORS(origins []string, next http.Handler, chain *[]string) http.Handler {
	if len(origins) == 0 {
		return next
	}
	// The first HTTP layer: named before the layers it wraps.
	at := slices.IndexFunc(*chain, func(name string) bool { return strings.HasPrefix(name, "http:") })
	if at < 0 {
		at = len(*chain)
	}
	*chain = slices.Insert(*chain, at, "http:cors(origins="+strings.Join(origins, ",")+")")
	return cors.New(cors.Options{
		AllowedOrigins: origins,
		AllowedMethods: connectcors.AllowedMethods(),
		AllowedHeaders: corsAllowedHeaders(),
		ExposedHeaders: corsExposedHeaders(),
		MaxAge:         int(corsPreflightMaxAge / time.Second),
	}).Handler(next)
}

// originList is the flag.Value of --cors-allowed-origins: comma-separated
// origins.
type originList struct{ v *[]string }

func (f originList) String() string {
	if f.v == nil {
		return ""
	}
	return strings.Join(*f.v, ",")
}

func (f originList) Set(s string) error {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	*f.v = out
	return nil
}

// checkOrigin refuses what no browser sends as an Origin: an origin is
// scheme://host[:port], without path, query or trailing slash. "*" allows
// every origin, and one * in the host stands for any characters
// (https://*.example.com).
func checkOrigin(origin string) error {
	if origin == "*" {
		return nil
	}
	if strings.Count(origin, "*") > 1 {
		return fmt.Errorf("origin %q has more than one *", origin)
	}
	u, err := url.Parse(strings.Replace(origin, "*", "wildcard", 1))
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return fmt.Errorf("origin %q is not scheme://host[:port], e.g. https://dashboard.example.com", origin)
	case u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return fmt.Errorf("origin %q has more than scheme://host[:port]; browsers send e.g. %s://%s", origin, u.Scheme, strings.Replace(u.Host, "wildcard", "*", 1))
	}
	return nil
}

// validateClients checks the settings of browsers and caches (issue 13).
func (c Config) validateClients() error {
	for _, o := range c.CORSAllowedOrigins {
		if err := checkOrigin(o); err != nil {
			return usage("--cors-allowed-origins: %w", err)
		}
	}
	if c.ListCacheMaxAge < 0 || c.ListCacheMaxAge%time.Second != 0 {
		return usage("--list-cache-max-age %v: want whole seconds, 0 (no-store) or more, e.g. 10s", c.ListCacheMaxAge)
	}
	return nil
}
