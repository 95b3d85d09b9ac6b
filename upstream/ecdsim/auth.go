package ecdsim

import (
	"crypto/hmac"
	"crypto/subtle"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/imagerecords/imagerecords/upstream/acs"
)

// skewWindow is how far a request's timestamp may be from the simulator
// clock, either way; nonces are remembered as long.
const skewWindow = 15 * time.Minute

// v3Required are the headers signature V3 must sign (besides the security
// token of an STS key).
var v3Required = [...]string{"host", "x-acs-action", "x-acs-content-sha256", "x-acs-date", "x-acs-signature-nonce", "x-acs-version"}

// v1Required are the common parameters signature V1 must carry.
var v1Required = [...]string{"AccessKeyId", "Signature", "SignatureMethod", "SignatureVersion", "SignatureNonce", "Timestamp"}

// request is what the handler has parsed of an incoming request.
type request struct {
	r       *http.Request
	query   url.Values // the query string only, as V3 signs it
	params  url.Values // the query string and a form body
	body    []byte
	action  string // from x-acs-action (V3) or Action (V1)
	version string // from x-acs-version (V3) or Version (V1)
}

// authenticate verifies the request's signature, timestamp, security token
// and nonce, in that order, and fills in req.action and req.version.
func (s *Simulator) authenticate(req *request, now time.Time) *apiError {
	if authz := req.r.Header.Get("Authorization"); strings.HasPrefix(authz, acs.V3Algorithm) {
		return s.authV3(req, authz, now)
	}
	if _, ok := req.params["Signature"]; ok {
		return s.authV1(req, now)
	}
	return errIncomplete("The request carries neither an ACS3-HMAC-SHA256 Authorization header nor a Signature parameter.")
}

func (s *Simulator) authV3(req *request, authz string, now time.Time) *apiError {
	r := req.r
	akID, signedList, signature, ok := acs.ParseV3Authorization(authz)
	if !ok {
		return errIncomplete("The Authorization header must be \"ACS3-HMAC-SHA256 Credential=<AccessKeyId>,SignedHeaders=<names>,Signature=<hex>\".")
	}
	names := strings.Split(signedList, ";")
	for _, name := range names {
		if name != "host" && name != "content-type" && !strings.HasPrefix(name, "x-acs-") {
			return errIncomplete("SignedHeaders lists " + name + "; this simulator verifies only host, content-type and x-acs-* headers.")
		}
	}
	for _, want := range v3Required {
		if !slices.Contains(names, want) {
			return errIncomplete("SignedHeaders must include " + want + ".")
		}
		if want != "host" && r.Header.Get(want) == "" {
			return errIncomplete("The header " + want + " is missing.")
		}
	}
	key, ok := s.keys[akID]
	if !ok {
		return errKeyNotFound()
	}
	token := r.Header.Get("x-acs-security-token")
	if token != "" && !slices.Contains(names, "x-acs-security-token") {
		return errIncomplete("SignedHeaders must include x-acs-security-token.")
	}
	if e := checkTimestamp(r.Header.Get("x-acs-date"), now); e != nil {
		return e
	}
	hashed := r.Header.Get("x-acs-content-sha256")
	if hashed != payloadHash(req.body) {
		return errSignature("The x-acs-content-sha256 header does not match the SHA-256 of the request body.")
	}
	// Recompute the signature over the headers the request says it signed,
	// no more: an x-acs- header it left out of the list is not ours to add.
	// A listed header that is missing is signed as empty.
	host := ""
	header := make(http.Header, len(names))
	for _, name := range names {
		if name == "host" {
			host = r.Host
			continue
		}
		vs := r.Header.Values(name)
		if len(vs) == 0 {
			vs = []string{""}
		}
		header[name] = vs
	}
	want, wantList := acs.V3Request{
		Method:        r.Method,
		Host:          host,
		Query:         req.query,
		Header:        header,
		HashedPayload: hashed,
	}.Signature(key.AccessKeySecret)
	if wantList != signedList {
		return errIncomplete("SignedHeaders must be lower-case names sorted in byte order, each once.")
	}
	if !hmac.Equal([]byte(want), []byte(signature)) {
		return errSignature("Specified signature is not matched with our calculation.")
	}
	if e := checkSecurityToken(key, token); e != nil {
		return e
	}
	if !s.nonces.use(akID, r.Header.Get("x-acs-signature-nonce"), now.UnixNano(), int64(skewWindow)) {
		return errNonceUsed()
	}
	req.action = r.Header.Get("x-acs-action")
	req.version = r.Header.Get("x-acs-version")
	return nil
}

func (s *Simulator) authV1(req *request, now time.Time) *apiError {
	p := req.params
	for _, name := range v1Required {
		if p.Get(name) == "" {
			return errIncomplete("The parameter " + name + " is missing.")
		}
	}
	if m := p.Get("SignatureMethod"); m != "HMAC-SHA1" {
		return errIncomplete("SignatureMethod must be HMAC-SHA1, not " + m + ".")
	}
	if v := p.Get("SignatureVersion"); v != "1.0" {
		return errIncomplete("SignatureVersion must be 1.0, not " + v + ".")
	}
	akID := p.Get("AccessKeyId")
	key, ok := s.keys[akID]
	if !ok {
		return errKeyNotFound()
	}
	if e := checkTimestamp(p.Get("Timestamp"), now); e != nil {
		return e
	}
	signature := p.Get("Signature")
	// req.params is this request's own map; Signature is no business
	// parameter, so it can go.
	delete(p, "Signature")
	want := acs.V1Signature(key.AccessKeySecret, req.r.Method, p)
	if !hmac.Equal([]byte(want), []byte(signature)) {
		// Like the real endpoint, quote the string to sign. It carries the
		// AccessKeyId and any STS token, which is why the gateway must never
		// pass this message on.
		return errSignature("Specified signature is not matched with our calculation. server string to sign is:" +
			acs.V1StringToSign(req.r.Method, p))
	}
	if e := checkSecurityToken(key, p.Get("SecurityToken")); e != nil {
		return e
	}
	if !s.nonces.use(akID, p.Get("SignatureNonce"), now.UnixNano(), int64(skewWindow)) {
		return errNonceUsed()
	}
	req.action = p.Get("Action")
	req.version = p.Get("Version")
	return nil
}

func checkTimestamp(v string, now time.Time) *apiError {
	ts, err := time.Parse(acs.TimestampLayout, v)
	if err != nil {
		return &apiError{status: http.StatusBadRequest, code: "InvalidTimeStamp.Format", kind: kindAuth,
			msg: "Specified time stamp or date value is not well formatted; use UTC " + acs.TimestampLayout + "."}
	}
	if d := ts.Sub(now); d > skewWindow || d < -skewWindow {
		return &apiError{status: http.StatusBadRequest, code: "InvalidTimeStamp.Expired", kind: kindAuth,
			msg: "Specified time stamp or date value is expired: it is more than 15 minutes from the server time."}
	}
	return nil
}

// checkSecurityToken requires an STS key's token, and only that; a
// long-term key must come without one. Every failure is
// InvalidSecurityToken.Malformed.
func checkSecurityToken(key Key, token string) *apiError {
	var msg string
	switch {
	case key.SecurityToken == "" && token != "":
		msg = "A SecurityToken was sent with a long-term AccessKey."
	case key.SecurityToken == "":
		return nil
	case token == "":
		msg = "The AccessKey is an STS key but the request carries no SecurityToken."
	case subtle.ConstantTimeCompare([]byte(token), []byte(key.SecurityToken)) != 1:
		msg = "Specified SecurityToken is malformed or does not belong to the AccessKey."
	default:
		return nil
	}
	return &apiError{status: http.StatusBadRequest, code: "InvalidSecurityToken.Malformed", kind: kindAuth, msg: msg}
}

func errIncomplete(msg string) *apiError {
	return &apiError{status: http.StatusBadRequest, code: "IncompleteSignature", kind: kindAuth, msg: msg}
}

func errSignature(msg string) *apiError {
	return &apiError{status: http.StatusBadRequest, code: "SignatureDoesNotMatch", kind: kindAuth, msg: msg}
}

func errKeyNotFound() *apiError {
	return &apiError{status: http.StatusNotFound, code: "InvalidAccessKeyId.NotFound", kind: kindAuth,
		msg: "Specified access key is not found."}
}

func errNonceUsed() *apiError {
	return &apiError{status: http.StatusBadRequest, code: "SignatureNonceUsed", kind: kindAuth,
		msg: "Specified signature nonce was used already."}
}
