package acs

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"slices"
	"strings"
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
	names := make([]string, 0, len(values))
	for name := range values {
		names = append(names, name)
	}
	slices.Sort(names)

	var b strings.Builder
	b.WriteString(r.Method)
	b.WriteString("\n/\n")
	b.WriteString(CanonicalQuery(r.Query))
	b.WriteByte('\n')
	for _, name := range names {
		vs := values[name]
		slices.Sort(vs)
		b.WriteString(name)
		b.WriteByte(':')
		b.WriteString(strings.Join(vs, ","))
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	signedHeaders = strings.Join(names, ";")
	b.WriteString(signedHeaders)
	b.WriteByte('\n')
	b.WriteString(r.HashedPayload)
	return b.String(), signedHeaders
}

// Signature returns the V3 signature of r under secret, lower-case hex, and
// the signed-headers list that goes with it into the Authorization header.
func (r V3Request) Signature(secret string) (signature, signedHeaders string) {
	canonical, signedHeaders := r.CanonicalRequest()
	hashed := sha256.Sum256([]byte(canonical))
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(V3Algorithm + "\n" + hex.EncodeToString(hashed[:])))
	return hex.EncodeToString(mac.Sum(nil)), signedHeaders
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
