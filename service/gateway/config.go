package gateway

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/imagerecords/imagerecords/service"
	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
	"github.com/imagerecords/imagerecords/upstream/redisquota"
)

// EnvPrefix leads the environment variable of every flag: --upstream-endpoint
// is IMAGERECORDS_UPSTREAM_ENDPOINT. A flag given on the command line wins
// over its variable.
const EnvPrefix = "IMAGERECORDS_"

// Config is every setting of a gateway. [DefaultConfig] holds the
// production defaults; the daemon's flags and environment variables
// ([ParseArgs]) set the fields, and the benchmark and the tests start from
// the same defaults.
type Config struct {
	// Listen is the address for Connect, gRPC and gRPC-Web (HTTP/1.1 and h2c).
	Listen string
	// AdminListen is the address of the admin listener (/metrics, /healthz);
	// empty: none.
	AdminListen string
	// TrustRemoteTrace continues the caller's W3C trace; false starts a new
	// trace linked to it.
	TrustRemoteTrace bool
	// UpstreamEndpoint overrides the regional https://ecd.<region>.aliyuncs.com.
	UpstreamEndpoint string
	// Signature is the upstream signature version.
	Signature upstream.SignatureVersion
	// Simulate answers from an embedded simulator with generated keys.
	Simulate bool
	// SimulateSeed seeds the simulator's desktops and records.
	SimulateSeed int64
	// SimulateFaults are the simulator's injected latency and faults.
	SimulateFaults ecdsim.Faults
	// ShutdownGrace is how long in-flight streams may run after SIGTERM.
	ShutdownGrace time.Duration
	// ReadHeaderTimeout bounds the time a client takes to send headers.
	ReadHeaderTimeout time.Duration
	// LogLevel is the lowest level logged.
	LogLevel slog.Level

	// UpstreamQPS and UpstreamBurst are the shared upstream rate limit;
	// UpstreamQPS 0 turns it off.
	UpstreamQPS   float64
	UpstreamBurst int
	// UpstreamAttemptTimeout bounds one upstream attempt, body included.
	UpstreamAttemptTimeout time.Duration

	// Quota: how the gateway lives within the account's API quota.
	//
	// UpstreamMaxWait bounds the time one page may wait for quota
	// (throttled attempts are retried, paced, until then).
	UpstreamMaxWait time.Duration
	// SimulateQuota is the simulator's account quota (QPS 0: none).
	SimulateQuota ecdsim.Quota
	// QuotaRedis, when set, is the Redis (redis:// or rediss:// URL) of
	// the upstream budget every replica shares.
	QuotaRedis string
	// QuotaKey names the Alibaba Cloud account in the shared budget's
	// keys; empty: a hash of the role ARN (ALIBABA_CLOUD_ROLE_ARN) or of
	// the AccessKeyId.
	QuotaKey string

	// TLSCert and TLSKey, when set, serve TLS instead of cleartext.
	TLSCert, TLSKey string
	// ClientCA, when set, requires client certificates signed by it.
	ClientCA string
	// AuthTokensFile, when set, requires a bearer token listed in it.
	AuthTokensFile string
	// Reflection serves gRPC server reflection.
	Reflection bool
	// MaxRequestBytes bounds a request message.
	MaxRequestBytes int
	// MaxHeaderBytes bounds a request header block.
	MaxHeaderBytes int
	// MaxConcurrentStreams bounds the RPCs at once on one HTTP/2 connection.
	MaxConcurrentStreams int
	// CompressMinBytes gzips responses of at least this size; 0 never.
	CompressMinBytes int

	// Deploy and operations (issue 10).
	//
	// DrainDelay is how long the listener keeps accepting new connections
	// and RPCs after SIGTERM, with readiness already NOT_SERVING, so that
	// load balancers and the mesh withdraw the instance before the drain
	// starts refusing calls.
	DrainDelay time.Duration
	// Fleet and watch (issue 12).
	// FleetConcurrency is how many desktops a fleet call pages at once:
	// the default and the cap of its max_concurrency.
	FleetConcurrency int
	// WatchMinInterval and WatchMaxInterval bound the time between two
	// polls of a watched desktop: the first while a change is in progress,
	// the second once it has long been settled.
	WatchMinInterval, WatchMaxInterval time.Duration
	// SimulateLive makes the first SimulateLiveDesktops sample desktops of
	// the simulator live: image changes start every SimulateLive.Every on
	// average and stay in progress SimulateLive.InProgress on average.
	SimulateLiveDesktops int
	SimulateLive         ecdsim.Live
	// SimulateOrder is the simulator's record order.
	SimulateOrder ecdsim.Order
	// Hardening (issue 14): connection, stream and caller limits, token
	// keys, insecure upstreams.

	// IdleTimeout closes a connection that has had no request in progress
	// (HTTP/1.1) or no stream open (HTTP/2) for this long.
	IdleTimeout time.Duration
	// MaxConnections bounds the open connections; past it, an idle
	// connection is closed to make room, or the new one is refused.
	MaxConnections int
	// MaxConnectionsPerPeer bounds the open connections from one remote
	// address (an IPv6 /64); TrustedProxies are exempt.
	MaxConnectionsPerPeer int
	// PeerIdentity is what the per-peer limits count by and the logs name:
	// PeerRemoteIP, PeerClientCert, PeerToken, or PeerHeaderPrefix+name.
	PeerIdentity string
	// TrustedProxies are the addresses whose forwarded identity header
	// (PeerHeaderPrefix) is believed, and whose connections are exempt from
	// MaxConnectionsPerPeer: the mesh sidecar.
	TrustedProxies []netip.Prefix
	// StreamStallTimeout cuts a response whose caller has accepted no data
	// for this long.
	StreamStallTimeout time.Duration
	// MaxStreamsPerPeer bounds the streaming RPCs open at once per peer,
	// and per bearer token.
	MaxStreamsPerPeer int
	// TokenKeyFile holds the keys that seal page and resume tokens, one per
	// line, the sealing key first; empty: a random key of this process.
	TokenKeyFile string
	// UpstreamAllowInsecure allows an http:// upstream endpoint other than
	// loopback, where the AccessKey id, signatures and STS token travel in
	// clear text.
	UpstreamAllowInsecure bool

	// Clients (issue 13): browsers and caches.
	//
	// CORSAllowedOrigins are the origins whose pages may call the gateway
	// (CORS); empty: none, no CORS headers at all.
	CORSAllowedOrigins []string
	// ListCacheMaxAge is the max-age of a Connect GET answer of
	// ListImageModifiedRecords (Cache-Control: private); 0: no-store.
	ListCacheMaxAge time.Duration
}

// DefaultConfig returns the production defaults: what a user gets who sets
// no flag.
func DefaultConfig() Config {
	return Config{
		Listen:                 "127.0.0.1:8080",
		TrustRemoteTrace:       true,
		Signature:              upstream.SignatureV3,
		SimulateSeed:           1,
		ShutdownGrace:          15 * time.Second,
		ReadHeaderTimeout:      10 * time.Second,
		LogLevel:               slog.LevelInfo,
		UpstreamQPS:            100,
		UpstreamBurst:          20,
		UpstreamAttemptTimeout: upstream.DefaultAttemptTimeout,
		UpstreamMaxWait:        upstream.DefaultMaxWait,
		Reflection:             true,
		MaxRequestBytes:        64 << 10,
		MaxHeaderBytes:         64 << 10,
		MaxConcurrentStreams:   250,
		CompressMinBytes:       0,

		// Deploy and operations (issue 10). No delay by default: Ctrl-C on a
		// laptop stops at once; the image's manifests set one.
		DrainDelay: 0,
		// Fleet and watch (issue 12).
		FleetConcurrency: service.DefaultFleetConcurrency,
		WatchMinInterval: service.DefaultWatchIntervals().Min,
		WatchMaxInterval: service.DefaultWatchIntervals().Max,
		SimulateLive:     ecdsim.Live{Every: ecdsim.DefaultLiveEvery, InProgress: ecdsim.DefaultLiveInProgress, FailFraction: 0.2},
		SimulateOrder:    ecdsim.OldestFirst,
		// Hardening (issue 14), sized for a pod of 2 cores and 512 MiB:
		// see the README's Security section for each figure.
		IdleTimeout:           2 * time.Minute,
		MaxConnections:        1024,
		MaxConnectionsPerPeer: 256,
		PeerIdentity:          PeerRemoteIP,
		StreamStallTimeout:    30 * time.Second,
		MaxStreamsPerPeer:     100,
		// Clients (issue 13): no origin and no caching, until the operator
		// names the dashboards' origins and how stale a page may be.
		CORSAllowedOrigins: nil,
		ListCacheMaxAge:    0,
	}
}

// UsageError is a bad command line or environment variable: the operator
// must change how the gateway is started. The daemon exits 2 for it.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

func usage(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

// FlagSet returns the daemon's flags, each bound to a field of c with c's
// value as its default. [ParseArgs] uses it on [DefaultConfig].
func (c *Config) FlagSet(output io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("imagerecordsd", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.StringVar(&c.Listen, "listen", c.Listen, "address to serve Connect, gRPC and gRPC-Web on (HTTP/1.1 and h2c)")
	fs.StringVar(&c.AdminListen, "admin-listen", c.AdminListen, "address for the admin listener with /metrics (Prometheus) and /healthz; empty: none")
	fs.BoolVar(&c.TrustRemoteTrace, "trust-remote-trace", c.TrustRemoteTrace, "continue the caller's W3C trace (traceparent); false starts a new trace with a link to it")
	fs.StringVar(&c.UpstreamEndpoint, "upstream-endpoint", c.UpstreamEndpoint, "upstream base URL overriding the regional https://ecd.<region>.aliyuncs.com, e.g. https://ecd.vpc-proxy.aliyuncs.com")
	fs.Var(signatureFlag{&c.Signature}, "signature", "upstream signature version: v3 (ACS3-HMAC-SHA256) or v1 (HMAC-SHA1)")
	fs.BoolVar(&c.Simulate, "simulate", c.Simulate, "serve from an embedded ECD simulator on a loopback port, with generated keys; no cloud account needed")
	fs.Int64Var(&c.SimulateSeed, "simulate-seed", c.SimulateSeed, "seed of the simulator's data (same seed, same desktops and records)")
	fs.DurationVar(&c.SimulateFaults.Latency, "simulate-latency", c.SimulateFaults.Latency, "with --simulate: latency added to every upstream answer")
	fs.Float64Var(&c.SimulateFaults.ThrottleFraction, "simulate-throttle", c.SimulateFaults.ThrottleFraction, "with --simulate: fraction (0..1) of upstream calls answered Throttling.User")
	fs.Float64Var(&c.SimulateFaults.ServerErrorFraction, "simulate-server-errors", c.SimulateFaults.ServerErrorFraction, "with --simulate: fraction (0..1) of upstream calls answered 503/500")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", c.ShutdownGrace, "on SIGTERM, how long in-flight streams may run before they are cancelled")
	fs.DurationVar(&c.ReadHeaderTimeout, "read-header-timeout", c.ReadHeaderTimeout, "how long a client may take to send request headers (streams themselves are never cut)")
	fs.Float64Var(&c.UpstreamQPS, "upstream-qps", c.UpstreamQPS, "upstream calls per second, shared by every RPC (retries included); 0: no limit")
	fs.IntVar(&c.UpstreamBurst, "upstream-burst", c.UpstreamBurst, "upstream calls allowed at once above --upstream-qps")
	fs.DurationVar(&c.UpstreamAttemptTimeout, "upstream-attempt-timeout", c.UpstreamAttemptTimeout, "bound of one upstream attempt, body included; a timed-out attempt is retried")
	// Quota.
	fs.DurationVar(&c.UpstreamMaxWait, "upstream-max-wait", c.UpstreamMaxWait, "how long one page may wait for quota: throttled calls are retried, paced, until then or the caller's deadline; 0: throttling is not retried")
	fs.Float64Var(&c.SimulateQuota.QPS, "simulate-quota-qps", c.SimulateQuota.QPS, "with --simulate: the simulated account's quota in calls/s, answered Throttling.User past it; 0: none")
	fs.IntVar(&c.SimulateQuota.Burst, "simulate-quota-burst", c.SimulateQuota.Burst, "with --simulate: calls the simulated quota allows at once; 0: --simulate-quota-qps rounded up")
	fs.StringVar(&c.QuotaRedis, "quota-redis", c.QuotaRedis, "Redis URL (redis://[:password@]host:port/db, rediss:// for TLS) of one upstream budget shared by every replica; empty: each replica paces itself alone")
	fs.StringVar(&c.QuotaKey, "quota-key", c.QuotaKey, "the account's name in the shared budget's keys; empty: a hash of ALIBABA_CLOUD_ROLE_ARN, else of the AccessKeyId (set it when running on STS credentials without a role ARN)")
	fs.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "PEM certificate chain: serve TLS (HTTP/1.1 and h2) instead of cleartext")
	fs.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "PEM private key of --tls-cert")
	fs.StringVar(&c.ClientCA, "client-ca", c.ClientCA, "PEM CA bundle: require client certificates signed by it (mTLS); needs --tls-cert")
	fs.StringVar(&c.AuthTokensFile, "auth-tokens-file", c.AuthTokensFile, "file of accepted bearer tokens, one per line, re-read on SIGHUP; empty: no token needed")
	fs.BoolVar(&c.Reflection, "reflection", c.Reflection, "serve gRPC server reflection (v1 and v1alpha)")
	fs.IntVar(&c.MaxRequestBytes, "max-request-bytes", c.MaxRequestBytes, "largest request message accepted")
	fs.IntVar(&c.MaxHeaderBytes, "max-header-bytes", c.MaxHeaderBytes, "largest request header block accepted")
	fs.IntVar(&c.MaxConcurrentStreams, "max-concurrent-streams", c.MaxConcurrentStreams, "HTTP/2 streams (RPCs) allowed at once on one connection")
	fs.IntVar(&c.CompressMinBytes, "compress-min-bytes", c.CompressMinBytes, "gzip (fastest level) responses of at least this many bytes when the caller accepts gzip; 0: never compress (cheapest inside a mesh)")
	fs.TextVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")

	// Deploy and operations (issue 10).
	fs.DurationVar(&c.DrainDelay, "drain-delay", c.DrainDelay, "on SIGTERM, how long to keep accepting new calls with readiness already NOT_SERVING, before the drain (--shutdown-grace) starts; e.g. 5s behind a load balancer or mesh")
	// Fleet and watch (issue 12).
	fs.IntVar(&c.FleetConcurrency, "fleet-concurrency", c.FleetConcurrency, fmt.Sprintf("desktops a fleet call pages at once: the default and the cap of its max_concurrency (1..%d)", service.MaxFleetConcurrency))
	fs.DurationVar(&c.WatchMinInterval, "watch-min-interval", c.WatchMinInterval, "time between two polls of a watched desktop while a change is in progress")
	fs.DurationVar(&c.WatchMaxInterval, "watch-max-interval", c.WatchMaxInterval, "longest time between two polls of a watched desktop, reached while it stays settled")
	fs.IntVar(&c.SimulateLiveDesktops, "simulate-live-desktops", c.SimulateLiveDesktops, "with --simulate: make the first n sample desktops live, their image changes starting, running and settling while the gateway runs")
	fs.DurationVar(&c.SimulateLive.Every, "simulate-live-every", c.SimulateLive.Every, "with --simulate-live-desktops: mean time between the starts of a live desktop's changes")
	fs.DurationVar(&c.SimulateLive.InProgress, "simulate-live-in-progress", c.SimulateLive.InProgress, "with --simulate-live-desktops: mean time a change stays in progress")
	fs.Var(orderFlag{&c.SimulateOrder}, "simulate-order", "with --simulate: the simulator's record order, oldest or newest (first)")
	// Hardening (issue 14).
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", c.IdleTimeout, "close a connection with no request in progress (HTTP/1.1) or no stream open (HTTP/2) for this long")
	fs.IntVar(&c.MaxConnections, "max-connections", c.MaxConnections, "open connections at most; past it an idle connection is closed to make room, or the new one is refused")
	fs.IntVar(&c.MaxConnectionsPerPeer, "max-connections-per-peer", c.MaxConnectionsPerPeer, "open connections at most from one remote address (IPv6: one /64); --trusted-proxies are exempt")
	fs.StringVar(&c.PeerIdentity, "peer-identity", c.PeerIdentity, "what per-peer limits count by and logs name: remote-ip, client-cert (mTLS URI/DNS SAN or CN), token (bearer token id), or header:<name> (set by --trusted-proxies only)")
	fs.Var(prefixList{&c.TrustedProxies}, "trusted-proxies", "comma-separated addresses or CIDRs of proxies (the mesh sidecar) whose identity header is believed and whose connections skip --max-connections-per-peer")
	fs.DurationVar(&c.StreamStallTimeout, "stream-stall-timeout", c.StreamStallTimeout, "cut a stream (or response) whose caller has accepted no data for this long; it resumes from its last resume_token")
	fs.IntVar(&c.MaxStreamsPerPeer, "max-streams-per-peer", c.MaxStreamsPerPeer, "streaming RPCs (record streams, health Watch, reflection) open at once per peer, and per bearer token")
	fs.StringVar(&c.TokenKeyFile, "token-key-file", c.TokenKeyFile, "keys (one per line, at least 32 bytes, the sealing key first) that sign page and resume tokens, the same on every replica, re-read on SIGHUP; empty: a random key of this process")
	fs.BoolVar(&c.UpstreamAllowInsecure, "upstream-allow-insecure", c.UpstreamAllowInsecure, "allow an http:// --upstream-endpoint other than loopback, sending the AccessKey id, signatures and any STS token in clear text")
	// Clients (issue 13).
	fs.Var(originList{&c.CORSAllowedOrigins}, "cors-allowed-origins", "comma-separated origins (scheme://host[:port], * for any) whose browser pages may call the gateway (CORS); empty: none")
	fs.DurationVar(&c.ListCacheMaxAge, "list-cache-max-age", c.ListCacheMaxAge, "how long browsers and other private caches may reuse a Connect GET answer of ListImageModifiedRecords (Cache-Control: private, max-age) before revalidating it with its ETag; 0: no-store")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: imagerecordsd [flags]\n       imagerecordsd --version\n\nEvery flag can also be set by the environment variable %s<FLAG> (upper case, - as _).\nCredentials come from the standard Alibaba Cloud chain (ALIBABA_CLOUD_ACCESS_KEY_ID, ...).\n\nFlags:\n", EnvPrefix)
		fs.PrintDefaults()
	}
	return fs
}

// signatureFlag is the flag.Value of --signature.
type signatureFlag struct{ v *upstream.SignatureVersion }

func (f signatureFlag) String() string {
	if f.v == nil {
		return ""
	}
	return string(*f.v)
}

func (f signatureFlag) Set(s string) error {
	v, ok := upstream.ParseSignatureVersion(s)
	if !ok {
		return fmt.Errorf("%q is neither v3 nor v1", s)
	}
	*f.v = v
	return nil
}

// orderFlag is the flag.Value of --simulate-order.
type orderFlag struct{ v *ecdsim.Order }

func (f orderFlag) String() string {
	if f.v == nil {
		return ""
	}
	return f.v.String()
}

func (f orderFlag) Set(s string) error {
	switch s {
	case "oldest":
		*f.v = ecdsim.OldestFirst
	case "newest":
		*f.v = ecdsim.NewestFirst
	default:
		return fmt.Errorf("%q is neither oldest nor newest", s)
	}
	return nil
}

// ParseArgs returns the configuration of the command line args, with every
// flag not on the command line taken from its environment variable
// (looked up with lookupEnv, e.g. os.LookupEnv), on top of [DefaultConfig].
// Errors are a [*UsageError], or flag.ErrHelp after -h (the usage went to
// output).
func ParseArgs(args []string, lookupEnv func(string) (string, bool), output io.Writer) (Config, error) {
	cfg := DefaultConfig()
	fs := cfg.FlagSet(output)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cfg, err
		}
		return cfg, &UsageError{Err: err}
	}
	if fs.NArg() > 0 {
		return cfg, usage("unexpected arguments: %q", fs.Args())
	}
	if err := applyEnv(fs, lookupEnv); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

// EnvName is the environment variable of a flag.
func EnvName(flagName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// applyEnv sets every flag not given on the command line from its
// environment variable.
func applyEnv(fs *flag.FlagSet, lookupEnv func(string) (string, bool)) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		name := EnvName(f.Name)
		if v, ok := lookupEnv(name); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = envValueError(f, name, v, e)
			}
		}
	})
	return err
}

// Validate refuses settings that cannot work together or make no sense.
func (c Config) Validate() error {
	if c.UpstreamEndpoint != "" {
		u, err := url.Parse(c.UpstreamEndpoint)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" {
			return usage("--upstream-endpoint %q is not an http(s) base URL such as https://ecd.vpc-proxy.aliyuncs.com", c.UpstreamEndpoint)
		}
	}
	switch {
	case c.Simulate && c.UpstreamEndpoint != "":
		return usage("--simulate and --upstream-endpoint exclude each other")
	case c.ShutdownGrace < 0 || c.ReadHeaderTimeout <= 0:
		return usage("--shutdown-grace must be >= 0 and --read-header-timeout > 0")
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return usage("--tls-cert and --tls-key go together")
	case c.ClientCA != "" && c.TLSCert == "":
		return usage("--client-ca needs --tls-cert and --tls-key")
	case c.UpstreamMaxWait < 0:
		return usage("--upstream-max-wait %v is negative; use 0 to not retry throttling", c.UpstreamMaxWait)
	case !c.Simulate && (c.SimulateQuota.QPS != 0 || c.SimulateQuota.Burst != 0):
		return usage("--simulate-quota-qps and --simulate-quota-burst need --simulate")
	case c.SimulateQuota.QPS < 0 || c.SimulateQuota.Burst < 0:
		return usage("--simulate-quota-qps and --simulate-quota-burst must not be negative")
	case c.QuotaRedis != "" && !validRedisURL(c.QuotaRedis):
		return usage("--quota-redis %q is not a Redis URL such as redis://:password@redis:6379/0 (or rediss:// for TLS)", redactURL(c.QuotaRedis))
	case c.MaxRequestBytes <= 0 || c.MaxHeaderBytes <= 0 || c.MaxConcurrentStreams <= 0 || c.UpstreamQPS < 0 || c.UpstreamBurst < 0:
		return usage("limits must be positive (--upstream-qps 0 disables the rate limit)")
	}

	// Deploy and operations (issue 10): operator mistakes that would
	// otherwise be accepted silently, each named with its fix.
	if err := c.validateOperations(); err != nil {
		return err
	}
	if err := c.validateFleetWatch(); err != nil {
		return err
	}
	// Clients (issue 13).
	if err := c.validateClients(); err != nil {
		return err
	}
	return c.validateHardening()
}

// validateFleetWatch checks the settings of fleets and watches (issue 12).
func (c Config) validateFleetWatch() error {
	switch {
	case c.FleetConcurrency < 1 || c.FleetConcurrency > service.MaxFleetConcurrency:
		return usage("--fleet-concurrency %d: want 1 to %d", c.FleetConcurrency, service.MaxFleetConcurrency)
	case c.WatchMinInterval < time.Millisecond || c.WatchMaxInterval < c.WatchMinInterval:
		return usage("--watch-min-interval %v and --watch-max-interval %v: want 1ms <= min <= max, e.g. 2s and 30s", c.WatchMinInterval, c.WatchMaxInterval)
	case c.SimulateLiveDesktops < 0 || c.SimulateLiveDesktops > len(ecdsim.DefaultDesktops(c.SimulateSeed)):
		return usage("--simulate-live-desktops %d: want 0 to %d (the sample desktops)", c.SimulateLiveDesktops, len(ecdsim.DefaultDesktops(c.SimulateSeed)))
	case c.SimulateLive.Every <= 0 || c.SimulateLive.InProgress <= 0:
		return usage("--simulate-live-every %v and --simulate-live-in-progress %v must be positive, e.g. 1m and 15s", c.SimulateLive.Every, c.SimulateLive.InProgress)
	}
	return nil
}

// validateHardening checks the settings of issue 14.
func (c Config) validateHardening() error {
	switch {
	case c.IdleTimeout <= 0 || c.StreamStallTimeout <= 0:
		return usage("--idle-timeout (%v) and --stream-stall-timeout (%v) must be positive", c.IdleTimeout, c.StreamStallTimeout)
	case c.MaxConnections <= 0 || c.MaxConnectionsPerPeer <= 0 || c.MaxStreamsPerPeer <= 0:
		return usage("--max-connections (%d), --max-connections-per-peer (%d) and --max-streams-per-peer (%d) must be positive",
			c.MaxConnections, c.MaxConnectionsPerPeer, c.MaxStreamsPerPeer)
	}
	peers, err := parsePeerIdentity(c.PeerIdentity, c.TrustedProxies)
	if err != nil {
		return usage("%w", err)
	}
	switch {
	case peers.mode == PeerClientCert && c.ClientCA == "":
		return usage("--peer-identity client-cert needs --client-ca (and --tls-cert): without mTLS there is no client certificate")
	case peers.mode == PeerToken && c.AuthTokensFile == "":
		return usage("--peer-identity token needs --auth-tokens-file")
	case peers.mode == PeerHeaderPrefix && len(c.TrustedProxies) == 0:
		return usage("--peer-identity %s needs --trusted-proxies: the header is believed only from them", c.PeerIdentity)
	}
	if c.UpstreamEndpoint != "" && !c.UpstreamAllowInsecure {
		if u, err := url.Parse(c.UpstreamEndpoint); err == nil && u.Scheme == "http" && !loopbackHost(u.Hostname()) {
			return usage("--upstream-endpoint %q is plain http: the AccessKey id, request signatures and any STS token would cross the network in clear text; use https, or add --upstream-allow-insecure if the network is trusted", c.UpstreamEndpoint)
		}
	}
	return nil
}

// loopbackHost reports whether host (of a URL) is this machine.
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// prefixList is the flag.Value of --trusted-proxies: comma-separated IP
// addresses or CIDR prefixes.
type prefixList struct{ v *[]netip.Prefix }

func (f prefixList) String() string {
	if f.v == nil {
		return ""
	}
	s := make([]string, len(*f.v))
	for i, p := range *f.v {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

func (f prefixList) Set(s string) error {
	var out []netip.Prefix
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if p, err := netip.ParsePrefix(item); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(item)
		if err != nil {
			return fmt.Errorf("%q is neither an IP address nor a CIDR prefix", item)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	*f.v = out
	return nil
}

// validRedisURL reports whether u is a Redis URL the shared budget can use.
func validRedisURL(u string) bool {
	_, err := redisquota.New(u)
	return err == nil
}

// redactURL hides the password of a URL for a message.
func redactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable)"
	}
	return p.Redacted()
}
