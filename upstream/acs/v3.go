package acs

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
)

const (
	// V3Algorithm names signature V3 in its string to sign and at the start
	// of its Authorization header.
	V3Algorithm = "ACS3-HMAC-SHA256"
	// EmptyPayloadHash is the lower-case hex SHA-256 of an empty body, the
	// x-acs-content-sha256 of a request without one.
	EmptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
)

// V3Request is the part of a request that signature V3 covers. The path is
// always /, the only one the RPC-style APIs use.
type V3Request struct {
	// Method is the HTTP method, e.g. POST.
	Method string
	// Host is the host (and port, if any) the request goes to; empty leaves
	// host out of the signature. A Host entry in Header is ignored, as
	// net/http ignores it.
	Host string
	// Query holds the query parameters, unencoded.
	Query url.Values
	// Header holds the request headers. Every header whose name starts
	// with x-acs-, and Content-Type, is signed, whatever the case of its
	// name; others are ignored.
	Header http.Header
	// HashedPayload is the lower-case hex SHA-256 of the body
	// ([EmptyPayloadHash] for none), as sent in x-acs-content-sha256.
	HashedPayload string
}

// CanonicalRequest returns the V3 canonical request and the signed-headers
// list (lower-case names joined by ;).
//
// A signed header's value is trimmed of white space (Unicode's, as the
// official Go implementation trims); several values of one header are
// sorted and joined with a comma, as the official implementation joins
// them.
func (r V3Request) CanonicalRequest() (canonical, signedHeaders string) {
	b, start, end := appendV3Canonical(nil, r.Method, r.Query, r.signedHeaders(), r.HashedPayload)
	canonical = string(b)
	return canonical, canonical[start:end]
}

// signedHeaders returns the header lines r signs, sorted by name.
func (r V3Request) signedHeaders() []v3Header {
	values := make(map[string][]string, len(r.Header)+1)
	if r.Host != "" {
		values["host"] = []string{strings.TrimSpace(r.Host)}
	}
	for key, vs := range r.Header {
		name := strings.ToLower(key)
		if name == "host" || !strings.HasPrefix(name, "x-acs-") && name != "content-type" {
			continue
		}
		for _, v := range vs {
			values[name] = append(values[name], strings.TrimSpace(v))
		}
	}
	headers := make([]v3Header, 0, len(values))
	for name, vs := range values {
		slices.Sort(vs)
		headers = append(headers, v3Header{name: name, value: strings.Join(vs, ",")})
	}
	slices.SortFunc(headers, func(a, b v3Header) int { return strings.Compare(a.name, b.name) })
	return headers
}

// Signature returns the V3 signature of r under secret, lower-case hex, and
// the signed-headers list that goes with it into the Authorization header.
func (r V3Request) Signature(secret string) (signature, signedHeaders string) {
	s := v3Signers.Get().(*v3Signer)
	defer v3Signers.Put(s)
	var start, end int
	s.canonical, start, end = appendV3Canonical(s.canonical[:0], r.Method, r.Query, r.signedHeaders(), r.HashedPayload)
	signedHeaders = string(s.canonical[start:end])
	var sig [2 * sha256.Size]byte
	s.sign(secret, sig[:])
	return string(sig[:]), signedHeaders
}

// v3Header is one line of the canonical headers: a lower-case name and
// its value, trimmed (several values sorted and joined with a comma).
type v3Header struct{ name, value string }

// appendV3Canonical appends to b the canonical request of a request to /
// whose signed headers are headers, sorted by name, and returns the
// result and where the signed-headers list is in it.
//
// Both [V3Request.Signature], which signs any request, and
// [Call.SignV3], which signs the client's, write through it, so the two
// canonicalise alike by construction; they differ only in how they
// collect the header lines.
func appendV3Canonical(b []byte, method string, query url.Values, headers []v3Header, hashedPayload string) (_ []byte, signedStart, signedEnd int) {
	b = append(b, method...)
	b = append(b, "\n/\n"...)
	b = appendCanonicalQuery(b, query)
	b = append(b, '\n')
	for _, h := range headers {
		b = append(b, h.name...)
		b = append(b, ':')
		b = append(b, h.value...)
		b = append(b, '\n')
	}
	b = append(b, '\n')
	signedStart = len(b)
	for i, h := range headers {
		if i > 0 {
			b = append(b, ';')
		}
		b = append(b, h.name...)
	}
	signedEnd = len(b)
	b = append(b, '\n')
	b = append(b, hashedPayload...)
	return b, signedStart, signedEnd
}

// v3Signer holds what signing one request needs and can use again for the
// next: the buffers the canonical request and the Authorization header
// are written into, and an
// HMAC-SHA256 keyed by the secret it last signed with. A signer is used by
// one goroutine at a time, taken from and given back to v3Signers.
type v3Signer struct {
	canonical []byte
	// authorization is the buffer [Call.SignV3Into] formats the
	// Authorization header in.
	authorization []byte
	// secret is mac's key. A request signed with another secret (the
	// credentials rotated, or another key) keys a new HMAC.
	secret string
	mac    hash.Hash
	// stringToSign is V3Algorithm, a newline and the hex SHA-256 of the
	// canonical request.
	stringToSign [len(V3Algorithm) + 1 + 2*sha256.Size]byte
	sum          [sha256.Size]byte
}

// v3Signers keeps signers between requests: a signer's HMAC keyed once
// signs every later request with the same secret after a Reset, without
// hashing the key anew.
var v3Signers = sync.Pool{New: func() any { return new(v3Signer) }}

// sign writes into sig (2*sha256.Size bytes) the lower-case hex signature
// of the canonical request in s.canonical under secret.
func (s *v3Signer) sign(secret string, sig []byte) {
	hashed := sha256.Sum256(s.canonical)
	n := copy(s.stringToSign[:], V3Algorithm+"\n")
	hex.Encode(s.stringToSign[n:], hashed[:])
	if s.mac == nil || s.secret != secret {
		s.mac = hmac.New(sha256.New, []byte(secret))
		s.secret = secret
	} else {
		s.mac.Reset()
	}
	s.mac.Write(s.stringToSign[:])
	hex.Encode(sig, s.mac.Sum(s.sum[:0]))
}

// V3Authorization formats the Authorization header of signature V3:
// "ACS3-HMAC-SHA256 Credential=<id>,SignedHeaders=<list>,Signature=<hex>".
func V3Authorization(accessKeyID, signedHeaders, signature string) string {
	return V3Algorithm + " Credential=" + accessKeyID + ",SignedHeaders=" + signedHeaders + ",Signature=" + signature
}

// ParseV3Authorization splits an Authorization header formatted as
// [V3Authorization] formats it; blanks around the comma-separated parts
// are allowed. ok is false unless the header starts with [V3Algorithm]
// and a space and has all three parts.
func ParseV3Authorization(header string) (accessKeyID, signedHeaders, signature string, ok bool) {
	rest, ok := strings.CutPrefix(header, V3Algorithm+" ")
	if !ok {
		return "", "", "", false
	}
	for part := range strings.SplitSeq(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "Credential":
			accessKeyID = v
		case "SignedHeaders":
			signedHeaders = v
		case "Signature":
			signature = v
		}
	}
	return accessKeyID, signedHeaders, signature, accessKeyID != "" && signedHeaders != "" && signature != ""
}
