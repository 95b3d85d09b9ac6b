// Package upstream is the client for Alibaba Cloud ECD's
// DescribeImageModifiedRecords API (product ECD, version 2020-09-30): it
// resolves the endpoint, signs every request (signature V3 ACS3-HMAC-SHA256 by
// default, V1 HMAC-SHA1 as an option) with credentials fetched per request,
// retries transient failures with capped, jittered backoff, parses the
// upstream error JSON into [APIError], and pages through a desktop's records
// with [Pages].
//
// The package knows nothing about gRPC or the gateway's own API; the service
// package depends on it through the narrow [API] interface.
package upstream
