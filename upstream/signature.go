package upstream

import "strings"

// SignatureVersion selects how the client signs its requests; package
// [github.com/imagerecords/imagerecords/upstream/acs] does the signing.
type SignatureVersion string

const (
	// SignatureV3 is ACS3-HMAC-SHA256, carried in the Authorization header.
	// It is the official SDK's default and ours.
	SignatureV3 SignatureVersion = "v3"
	// SignatureV1 is the legacy RPC HMAC-SHA1 scheme, carried in the
	// Signature parameter (the client sends the parameters in a form body).
	// Alibaba Cloud still accepts it.
	SignatureV1 SignatureVersion = "v1"
)

// ParseSignatureVersion accepts "v3" or "v1".
func ParseSignatureVersion(s string) (SignatureVersion, bool) {
	switch v := SignatureVersion(strings.ToLower(s)); v {
	case SignatureV3, SignatureV1:
		return v, true
	}
	return "", false
}
