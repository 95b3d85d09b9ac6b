package upstream

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/url"
	"slices"
	"strings"
)

// SignatureVersion selects how requests are signed.
type SignatureVersion string

const (
	// SignatureV3 is ACS3-HMAC-SHA256, carried in the Authorization header.
	// It is the official SDK's default and ours.
	SignatureV3 SignatureVersion = "v3"
	// SignatureV1 is the legacy RPC HMAC-SHA1 scheme, carried in the query
	// string. Alibaba Cloud still accepts it.
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

const (
	// V3Algorithm names signature V3 in the string to sign and the
	// Authorization header.
	V3Algorithm = "ACS3-HMAC-SHA256"
	// EmptyPayloadHash is the lowercase hex SHA-256 of an empty body.
	EmptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
)

// PercentEncode encodes s the way both signature versions require: UTF-8
// bytes, every byte outside A-Z a-z 0-9 - _ . ~ as %XY with upper-case hex
// (so a space is %20, never +).
func PercentEncode(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if !unreserved(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	const hexDigits = "0123456789ABCDEF"
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if unreserved(c) {
			b = append(b, c)
			continue
		}
		b = append(b, '%', hexDigits[c>>4], hexDigits[c&15])
	}
	return string(b)
}

func unreserved(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
		c == '-' || c == '_' || c == '.' || c == '~'
}

// CanonicalQuery sorts params by name (byte order) and joins them as
// enc(k)=enc(v) with &; an empty value gives "k=". A name with several
// values contributes one pair per value, in the order given.
func CanonicalQuery(params url.Values) string {
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		ek := PercentEncode(k)
		for _, v := range params[k] {
			if b.Len() > 0 {
				b.WriteByte('&')
			}
			b.WriteString(ek)
			b.WriteByte('=')
			b.WriteString(PercentEncode(v))
		}
	}
	return b.String()
}

// V3Request is the part of a request that signature V3 covers.
type V3Request struct {
	// Method is the HTTP method, e.g. POST.
	Method string
	// Query holds the query parameters, unencoded.
	Query url.Values
	// Headers maps lower-case header names to values. Every name starting
	// with x-acs-, and host and content-type, is signed; others are ignored.
	Headers map[string]string
	// HashedPayload is the lowercase hex SHA-256 of the body
	// ([EmptyPayloadHash] for none).
	HashedPayload string
}

// CanonicalRequest returns the V3 canonical request and the signed-headers
// list (names joined by ;).
func (r V3Request) CanonicalRequest() (canonical, signedHeaders string) {
	names := make([]string, 0, len(r.Headers))
	for name := range r.Headers {
		if signedV3Header(name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var b strings.Builder
	b.WriteString(r.Method)
	b.WriteString("\n/\n")
	b.WriteString(CanonicalQuery(r.Query))
	b.WriteByte('\n')
	for _, name := range names {
		b.WriteString(name)
		b.WriteByte(':')
		// ASCII whitespace only, as HTTP and the specification trim:
		// strings.TrimSpace would also drop Unicode spaces such as U+00A0.
		b.WriteString(strings.Trim(r.Headers[name], " \t\n\r\v\f"))
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	signedHeaders = strings.Join(names, ";")
	b.WriteString(signedHeaders)
	b.WriteByte('\n')
	b.WriteString(r.HashedPayload)
	return b.String(), signedHeaders
}

func signedV3Header(lowerName string) bool {
	return strings.HasPrefix(lowerName, "x-acs-") || lowerName == "host" || lowerName == "content-type"
}

// HashCanonicalRequest is the lowercase hex SHA-256 of a canonical request,
// the second line of the V3 string to sign.
func HashCanonicalRequest(canonical string) string {
	sum := sha256.Sum256([]byte(canonical))
	return hex.EncodeToString(sum[:])
}

// Sign returns the V3 signature of r under secret and the signed-headers
// list to put in the Authorization header.
func (r V3Request) Sign(secret string) (signature, signedHeaders string) {
	canonical, signedHeaders := r.CanonicalRequest()
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(V3Algorithm + "\n" + HashCanonicalRequest(canonical)))
	return hex.EncodeToString(mac.Sum(nil)), signedHeaders
}

// V3Authorization formats the Authorization header of signature V3.
func V3Authorization(accessKeyID, signedHeaders, signature string) string {
	return V3Algorithm + " Credential=" + accessKeyID + ",SignedHeaders=" + signedHeaders + ",Signature=" + signature
}

// V1StringToSign is METHOD&%2F&enc(canonical query) for signature V1;
// params must not contain Signature.
func V1StringToSign(method string, params url.Values) string {
	return method + "&%2F&" + PercentEncode(CanonicalQuery(params))
}

// V1Signature returns the base64 HMAC-SHA1 of the V1 string to sign under
// secret+"&".
func V1Signature(secret, method string, params url.Values) string {
	mac := hmac.New(sha1.New, []byte(secret+"&"))
	mac.Write([]byte(V1StringToSign(method, params)))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}
