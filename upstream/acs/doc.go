// Package acs signs Alibaba Cloud API requests: signature V3
// (ACS3-HMAC-SHA256, carried in the Authorization header) and the legacy
// signature V1 (RPC HMAC-SHA1, carried in a Signature parameter).
//
// It has three users. The upstream client signs every outgoing call with
// [Call.SignV3Into] or [Call.SignV1]. The ECD simulator verifies a received
// request by recomputing its signature with [V3Request.Signature] or
// [V1Signature] and comparing. The benchmark's direct client, which stands
// for a caller that skips the gateway, signs with [Call.SignV3] like the
// official SDK would.
//
// The lower-level functions ([PercentEncode], [CanonicalQuery],
// [V3Request.CanonicalRequest], [V1StringToSign]) are exported so that a
// verifier can say what it signed, and so that tests can compare each step
// with a reference.
//
// # One implementation, checked from outside
//
// The simulator deliberately shares this package with the client rather
// than carrying a second signer: two implementations written by the same
// hands would share their misreadings of the specification, and a bug in
// both (say, leaving * unencoded) would pass every end-to-end test while
// the real API refused every call. Instead this package is verified on its
// own, against the published test vectors and by a differential fuzz test
// against Alibaba's official implementation (the darabonba openapi-util
// module that the official SDKs use), which is a test-only dependency; and
// the simulator's own tests send it requests signed by that official code.
// So a request that the simulator accepts is one that the official SDK
// would have signed the same way, and the other way round. The client's
// path, [Call.SignV3Into], skips collecting and sorting headers (it signs
// a fixed set) but writes the canonical request and signs it with the
// same code as [V3Request.Signature], and a differential fuzz test holds
// the two to the same headers and Authorization.
//
// Where the official implementation and the published specification
// disagree, this package follows the official implementation, whose
// signatures the real API accepts: a signed header value is trimmed of
// Unicode white space, and several values of one header are sorted and
// joined with a comma. The exception is V3 parameter names: the official
// Go code signs them unencoded while it sends them encoded, which works
// only for names that need no encoding, as every real parameter name
// (letters, digits and dots) does; this package encodes them, as the
// specification says. official_test.go documents each case.
package acs
