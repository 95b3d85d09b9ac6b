package acs

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"net/url"
)

// V1StringToSign is METHOD&%2F&PercentEncode(CanonicalQuery(params)), the
// string that signature V1 signs; params are every parameter of the
// request, query string and form body together, without Signature.
func V1StringToSign(method string, params url.Values) string {
	return string(appendV1StringToSign(nil, method, appendCanonicalQuery(nil, params)))
}

// appendV1StringToSign appends to b the string to sign of a request whose
// canonical query is query.
func appendV1StringToSign(b []byte, method string, query []byte) []byte {
	b = append(b, method...)
	b = append(b, "&%2F&"...)
	return appendPercentEncoded(b, query)
}

// V1Signature returns the signature V1 of a request: the base64 HMAC-SHA1
// of [V1StringToSign] under the key secret+"&".
func V1Signature(secret, method string, params url.Values) string {
	var sig [v1SignatureLen]byte
	v1Sign(sig[:], secret, appendV1StringToSign(nil, method, appendCanonicalQuery(nil, params)))
	return string(sig[:])
}

// v1SignatureLen is the length of a V1 signature: a SHA-1 in base64.
const v1SignatureLen = (sha1.Size + 2) / 3 * 4

// v1Sign writes into sig the base64 HMAC-SHA1 of stringToSign under the
// key secret+"&".
func v1Sign(sig []byte, secret string, stringToSign []byte) {
	mac := hmac.New(sha1.New, []byte(secret+"&"))
	mac.Write(stringToSign)
	var sum [sha1.Size]byte
	base64.StdEncoding.Encode(sig, mac.Sum(sum[:0]))
}
