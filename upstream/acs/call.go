package acs

import (
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Credentials sign a request: an AccessKey pair, and the security token
// that comes with an STS key (empty for a long-term key). They format as a
// redacted string, so that a stray %v never prints the secret.
type Credentials struct {
	AccessKeyID     string
	AccessKeySecret string
	SecurityToken   string
}

// String shows the AccessKeyId only.
func (c Credentials) String() string {
	return "acs.Credentials{AccessKeyID: " + c.AccessKeyID + ", secrets redacted}"
}

// GoString is String, so %#v redacts too.
func (c Credentials) GoString() string { return c.String() }

// Call is one attempt at an RPC-style API call, ready to sign: the action,
// its parameters, and what makes this attempt's signature unique. Sign
// every attempt anew, with a fresh Nonce and the current Timestamp: the API
// refuses a nonce it has seen and a timestamp 15 minutes off.
type Call struct {
	// Action and Version name the operation, e.g.
	// DescribeImageModifiedRecords and 2020-09-30.
	Action  string
	Version string
	// Params are the operation's own parameters, unencoded. The signing
	// methods leave the map as it is.
	Params url.Values
	// Timestamp dates the signature; it is sent in UTC, to the second.
	Timestamp time.Time
	// Nonce is a random string used once.
	Nonce string
}

// SignV3 signs c with signature V3 for a POST without a body to host. It
// returns the query string that carries the parameters, and the headers
// to send: x-acs-action, x-acs-version, x-acs-date,
// x-acs-signature-nonce, x-acs-content-sha256, for an STS key
// x-acs-accesskey-id and x-acs-security-token, and Authorization. The
// Host header comes from the request URL.
func (c Call) SignV3(host string, creds Credentials) (rawQuery string, header http.Header) {
	header = make(http.Header, v3HeaderCount(creds))
	return c.SignV3Into(header, host, creds), header
}

// v3HeaderCount is how many headers [Call.SignV3Into] sets for creds: 6,
// or 8 for an STS key.
func v3HeaderCount(creds Credentials) int {
	if creds.SecurityToken != "" {
		return 8
	}
	return 6
}

// The names of the headers SignV3Into sets, in their canonical form (as
// [http.CanonicalHeaderKey] spells them), and the lower-case form they are
// signed under.
const (
	headerAction        = "X-Acs-Action"
	headerVersion       = "X-Acs-Version"
	headerDate          = "X-Acs-Date"
	headerNonce         = "X-Acs-Signature-Nonce"
	headerContentSHA256 = "X-Acs-Content-Sha256"
	headerAccessKeyID   = "X-Acs-Accesskey-Id"
	headerSecurityToken = "X-Acs-Security-Token"
	headerAuthorization = "Authorization"
)

// SignV3Into is [Call.SignV3] setting the headers in header, which may
// hold others (unsigned ones such as Accept; a signed one, x-acs-* or
// Content-Type, would go unsigned). The caller can make header with room
// for its own headers and these (six, eight for an STS key).
//
// It signs what [V3Request.Signature] would sign for the same request, by
// the same code, without building a [V3Request]: the headers it signs are
// fixed, so they need neither collecting nor sorting.
func (c Call) SignV3Into(header http.Header, host string, creds Credentials) (rawQuery string) {
	s := v3Signers.Get().(*v3Signer)
	defer v3Signers.Put(s)

	// The query string and the date share one allocation.
	s.canonical = appendCanonicalQuery(s.canonical[:0], c.Params)
	queryEnd := len(s.canonical)
	s.canonical = c.Timestamp.UTC().AppendFormat(s.canonical, TimestampLayout)
	queryDate := string(s.canonical)
	rawQuery, date := queryDate[:queryEnd], queryDate[queryEnd:]

	// The header lines in sorted order: host, then x-acs-* by name.
	var lines [8]v3Header
	signed := lines[:0]
	if host != "" {
		signed = append(signed, v3Header{"host", strings.TrimSpace(host)})
	}
	if creds.SecurityToken != "" {
		// The official SDK signs the AccessKeyId too when it sends a token.
		signed = append(signed, v3Header{"x-acs-accesskey-id", strings.TrimSpace(creds.AccessKeyID)})
	}
	signed = append(signed,
		v3Header{"x-acs-action", strings.TrimSpace(c.Action)},
		v3Header{"x-acs-content-sha256", EmptyPayloadHash},
		v3Header{"x-acs-date", date})
	if creds.SecurityToken != "" {
		signed = append(signed, v3Header{"x-acs-security-token", strings.TrimSpace(creds.SecurityToken)})
	}
	signed = append(signed,
		v3Header{"x-acs-signature-nonce", strings.TrimSpace(c.Nonce)},
		v3Header{"x-acs-version", strings.TrimSpace(c.Version)})

	var start, end int
	s.canonical, start, end = appendV3Canonical(s.canonical[:0], http.MethodPost, c.Params, signed, EmptyPayloadHash)
	var sig [64]byte
	s.sign(creds.AccessKeySecret, sig[:])
	// The Authorization header, formatted as V3Authorization formats it.
	s.authorization = append(s.authorization[:0], V3Algorithm+" Credential="...)
	s.authorization = append(s.authorization, creds.AccessKeyID...)
	s.authorization = append(s.authorization, ",SignedHeaders="...)
	s.authorization = append(s.authorization, s.canonical[start:end]...)
	s.authorization = append(s.authorization, ",Signature="...)
	s.authorization = append(s.authorization, sig[:]...)

	// The header values, untrimmed as the caller gave them, in one array.
	values := make([]string, 0, 8)
	add := func(name, value string) {
		values = append(values, value)
		header[name] = values[len(values)-1 : len(values) : len(values)]
	}
	add(headerAction, c.Action)
	add(headerVersion, c.Version)
	add(headerDate, date)
	add(headerNonce, c.Nonce)
	add(headerContentSHA256, EmptyPayloadHash)
	if creds.SecurityToken != "" {
		add(headerAccessKeyID, creds.AccessKeyID)
		add(headerSecurityToken, creds.SecurityToken)
	}
	add(headerAuthorization, string(s.authorization))
	return rawQuery
}

// SignV1 signs c with signature V1 for method and returns every parameter
// (c's own, Action, Version, Format=JSON, AccessKeyId, SignatureMethod,
// SignatureVersion, SignatureNonce, Timestamp, SecurityToken for an STS
// key, and Signature last) encoded as a query string, which is also an
// application/x-www-form-urlencoded body.
func (c Call) SignV1(method string, creds Credentials) string {
	params := make(url.Values, len(c.Params)+9)
	for k, v := range c.Params {
		params[k] = v
	}
	params.Set("Action", c.Action)
	params.Set("Version", c.Version)
	params.Set("Format", "JSON")
	params.Set("AccessKeyId", creds.AccessKeyID)
	params.Set("SignatureMethod", "HMAC-SHA1")
	params.Set("SignatureVersion", "1.0")
	params.Set("SignatureNonce", c.Nonce)
	params.Set("Timestamp", c.Timestamp.UTC().Format(TimestampLayout))
	if creds.SecurityToken != "" {
		params.Set("SecurityToken", creds.SecurityToken)
	}
	// The body is the canonical query with the signature appended, so the
	// query is encoded once, for both.
	body := appendCanonicalQuery(make([]byte, 0, 512), params)
	stringToSign := appendV1StringToSign(make([]byte, 0, 3*len(body)+len(method)+8), method, body)
	var sig [v1SignatureLen]byte
	v1Sign(sig[:], creds.AccessKeySecret, stringToSign)
	body = append(body, "&Signature="...)
	body = appendPercentEncoded(body, sig[:])
	return string(body)
}
