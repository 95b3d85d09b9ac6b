package acs

import (
	"net/http"
	"net/url"
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
	header = http.Header{}
	header.Set("x-acs-action", c.Action)
	header.Set("x-acs-version", c.Version)
	header.Set("x-acs-date", c.Timestamp.UTC().Format(TimestampLayout))
	header.Set("x-acs-signature-nonce", c.Nonce)
	header.Set("x-acs-content-sha256", EmptyPayloadHash)
	if creds.SecurityToken != "" {
		// The official SDK signs the AccessKeyId too when it sends a token.
		header.Set("x-acs-accesskey-id", creds.AccessKeyID)
		header.Set("x-acs-security-token", creds.SecurityToken)
	}
	signature, signedHeaders := V3Request{
		Method:        http.MethodPost,
		Host:          host,
		Query:         c.Params,
		Header:        header,
		HashedPayload: EmptyPayloadHash,
	}.Signature(creds.AccessKeySecret)
	header.Set("Authorization", V3Authorization(creds.AccessKeyID, signedHeaders, signature))
	return CanonicalQuery(c.Params), header
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
	return CanonicalQuery(params) + "&Signature=" + PercentEncode(V1Signature(creds.AccessKeySecret, method, params))
}
