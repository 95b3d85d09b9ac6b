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
	return method + "&%2F&" + PercentEncode(CanonicalQuery(params))
}

// V1Signature returns the signature V1 of a request: the base64 HMAC-SHA1
// of [V1StringToSign] under the key secret+"&".
func V1Signature(secret, method string, params url.Values) string {
	mac := hmac.New(sha1.New, []byte(secret+"&"))
	mac.Write([]byte(V1StringToSign(method, params)))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}
