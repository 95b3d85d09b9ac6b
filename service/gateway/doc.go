// Package gateway wires ImageRecordsService into a server: the typed
// [Config] with its production defaults and flags, the one handler chain
// (CORS preflights, bearer tokens before any body is read, the caller's
// identity, stream, stall and body limits, Cache-Control and ETags,
// tracing, access log, shutdown guard, panic recovery, read limits,
// compression, the proto codec that encodes pages of records by hand),
// health, reflection, TLS,
// connection limits, the admin listener, serving and draining, telemetry,
// and the upstream client built from the Config, with its calls admitted
// in turns per caller. The daemon (cmd/imagerecordsd), the benchmark
// (cmd/imagerecords-bench) and the end-to-end tests all build their gateway
// here, so they run the same code.
//
// It lives under service/ because it is the service's server: it depends on
// package service (which knows nothing of HTTP servers), service depends on
// upstream, and nothing depends back. A package under cmd/internal would
// hide it from the tests of service and upstream, which use the test kit in
// [github.com/imagerecords/imagerecords/service/gateway/gatewaytest].
package gateway
