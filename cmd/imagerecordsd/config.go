package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// envPrefix leads the environment variable of every flag: --upstream-endpoint
// is IMAGERECORDS_UPSTREAM_ENDPOINT. A flag given on the command line wins
// over its variable.
const envPrefix = "IMAGERECORDS_"

type config struct {
	listen            string
	adminListen       string
	trustRemoteTrace  bool
	upstreamEndpoint  string
	signature         upstream.SignatureVersion
	simulate          bool
	simulateSeed      int64
	simulateFaults    ecdsim.Faults
	shutdownGrace     time.Duration
	readHeaderTimeout time.Duration
	logLevel          slog.Level

	upstreamQPS            float64
	upstreamBurst          int
	upstreamAttemptTimeout time.Duration

	tlsCert, tlsKey, clientCA string
	authTokensFile            string
	reflection                bool
	maxRequestBytes           int
	maxHeaderBytes            int
	maxConcurrentStreams      int
	compressMinBytes          int
}

// usageError is a bad command line; main exits 2 for it.
type usageError struct{ error }

func parseConfig(args []string, stderr io.Writer) (config, error) {
	cfg := config{}
	fs := flag.NewFlagSet("imagerecordsd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.listen, "listen", "127.0.0.1:8080", "address to serve Connect, gRPC and gRPC-Web on (HTTP/1.1 and h2c)")
	fs.StringVar(&cfg.adminListen, "admin-listen", "", "address for the admin listener with /metrics (Prometheus) and /healthz; empty: none")
	fs.BoolVar(&cfg.trustRemoteTrace, "trust-remote-trace", true, "continue the caller's W3C trace (traceparent); false starts a new trace with a link to it")
	fs.StringVar(&cfg.upstreamEndpoint, "upstream-endpoint", "", "upstream base URL overriding the regional https://ecd.<region>.aliyuncs.com, e.g. https://ecd.vpc-proxy.aliyuncs.com")
	signature := fs.String("signature", "v3", "upstream signature version: v3 (ACS3-HMAC-SHA256) or v1 (HMAC-SHA1)")
	fs.BoolVar(&cfg.simulate, "simulate", false, "serve from an embedded ECD simulator on a loopback port, with generated keys; no cloud account needed")
	fs.Int64Var(&cfg.simulateSeed, "simulate-seed", 1, "seed of the simulator's data (same seed, same desktops and records)")
	fs.DurationVar(&cfg.simulateFaults.Latency, "simulate-latency", 0, "with --simulate: latency added to every upstream answer")
	fs.Float64Var(&cfg.simulateFaults.ThrottleFraction, "simulate-throttle", 0, "with --simulate: fraction (0..1) of upstream calls answered Throttling.User")
	fs.Float64Var(&cfg.simulateFaults.ServerErrorFraction, "simulate-server-errors", 0, "with --simulate: fraction (0..1) of upstream calls answered 503/500")
	fs.DurationVar(&cfg.shutdownGrace, "shutdown-grace", 15*time.Second, "on SIGTERM, how long in-flight streams may run before they are cancelled")
	fs.DurationVar(&cfg.readHeaderTimeout, "read-header-timeout", 10*time.Second, "how long a client may take to send request headers (streams themselves are never cut)")
	fs.Float64Var(&cfg.upstreamQPS, "upstream-qps", 100, "upstream calls per second, shared by every RPC (retries included); 0: no limit")
	fs.IntVar(&cfg.upstreamBurst, "upstream-burst", 20, "upstream calls allowed at once above --upstream-qps")
	fs.DurationVar(&cfg.upstreamAttemptTimeout, "upstream-attempt-timeout", upstream.DefaultAttemptTimeout, "bound of one upstream attempt, body included; a timed-out attempt is retried")
	fs.StringVar(&cfg.tlsCert, "tls-cert", "", "PEM certificate chain: serve TLS (HTTP/1.1 and h2) instead of cleartext")
	fs.StringVar(&cfg.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&cfg.clientCA, "client-ca", "", "PEM CA bundle: require client certificates signed by it (mTLS); needs --tls-cert")
	fs.StringVar(&cfg.authTokensFile, "auth-tokens-file", "", "file of accepted bearer tokens, one per line, re-read on SIGHUP; empty: no token needed")
	fs.BoolVar(&cfg.reflection, "reflection", true, "serve gRPC server reflection (v1 and v1alpha)")
	fs.IntVar(&cfg.maxRequestBytes, "max-request-bytes", 64<<10, "largest request message accepted")
	fs.IntVar(&cfg.maxHeaderBytes, "max-header-bytes", 64<<10, "largest request header block accepted")
	fs.IntVar(&cfg.maxConcurrentStreams, "max-concurrent-streams", 250, "HTTP/2 streams (RPCs) allowed at once on one connection")
	fs.IntVar(&cfg.compressMinBytes, "compress-min-bytes", 0, "gzip (fastest level) responses of at least this many bytes when the caller accepts gzip; 0: never compress (cheapest inside a mesh)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: imagerecordsd [flags]\n\nEvery flag can also be set by the environment variable %s<FLAG> (upper case, - as _).\nCredentials come from the standard Alibaba Cloud chain (ALIBABA_CLOUD_ACCESS_KEY_ID, ...).\n\nFlags:\n", envPrefix)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return cfg, err
		}
		return cfg, usageError{err}
	}
	if fs.NArg() > 0 {
		return cfg, usageError{fmt.Errorf("unexpected arguments: %q", fs.Args())}
	}
	if err := applyEnv(fs); err != nil {
		return cfg, usageError{err}
	}
	v, ok := upstream.ParseSignatureVersion(*signature)
	if !ok {
		return cfg, usageError{fmt.Errorf("--signature: %q is neither v3 nor v1", *signature)}
	}
	cfg.signature = v
	if err := cfg.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		return cfg, usageError{fmt.Errorf("--log-level: %w", err)}
	}
	if cfg.upstreamEndpoint != "" {
		// Checked here, not at the first upstream call.
		u, err := url.Parse(cfg.upstreamEndpoint)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" {
			return cfg, usageError{fmt.Errorf("--upstream-endpoint %q is not an http(s) base URL such as https://ecd.vpc-proxy.aliyuncs.com", cfg.upstreamEndpoint)}
		}
	}
	if cfg.simulate && cfg.upstreamEndpoint != "" {
		return cfg, usageError{fmt.Errorf("--simulate and --upstream-endpoint exclude each other")}
	}
	if cfg.shutdownGrace < 0 || cfg.readHeaderTimeout <= 0 {
		return cfg, usageError{fmt.Errorf("--shutdown-grace must be >= 0 and --read-header-timeout > 0")}
	}
	if (cfg.tlsCert == "") != (cfg.tlsKey == "") {
		return cfg, usageError{fmt.Errorf("--tls-cert and --tls-key go together")}
	}
	if cfg.clientCA != "" && cfg.tlsCert == "" {
		return cfg, usageError{fmt.Errorf("--client-ca needs --tls-cert and --tls-key")}
	}
	if cfg.maxRequestBytes <= 0 || cfg.maxHeaderBytes <= 0 || cfg.maxConcurrentStreams <= 0 || cfg.upstreamQPS < 0 || cfg.upstreamBurst < 0 {
		return cfg, usageError{fmt.Errorf("limits must be positive (--upstream-qps 0 disables the rate limit)")}
	}
	return cfg, nil
}

// applyEnv sets every flag not given on the command line from its
// environment variable.
func applyEnv(fs *flag.FlagSet) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		name := envPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s: %w", name, e)
			}
		}
	})
	return err
}
