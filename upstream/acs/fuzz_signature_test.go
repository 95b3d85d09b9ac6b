package acs_test

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"testing"

	"github.com/imagerecords/imagerecords/upstream/acs"
)

// The reference below is written from the signature specifications
// (ECD_API.md), not from this package, and uses none of its functions.
// Where the specification leaves a choice open, it makes the one that the
// official implementation makes (see official_test.go): header values are
// trimmed of Unicode white space, and several values of one header are
// sorted and joined with a comma.

// specEncode percent-encodes the UTF-8 bytes of s: every byte outside
// A-Z a-z 0-9 - _ . ~ becomes %XY with upper-case hex.
func specEncode(s string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_', c == '.', c == '~':
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&0xf])
		}
	}
	return b.String()
}

// specQuery sorts the parameters by name, byte-wise (several values of one
// name keep their order), and joins enc(name)=enc(value) with &.
func specQuery(params url.Values) string {
	type pair struct{ k, v string }
	var pairs []pair
	for k, vs := range params {
		for _, v := range vs {
			pairs = append(pairs, pair{k, v})
		}
	}
	sort.SliceStable(pairs, func(i, j int) bool { return pairs[i].k < pairs[j].k })
	parts := make([]string, len(pairs))
	for i, p := range pairs {
		parts[i] = specEncode(p.k) + "=" + specEncode(p.v)
	}
	return strings.Join(parts, "&")
}

// specV3 computes the ACS3-HMAC-SHA256 canonical request, signed headers
// and signature.
func specV3(method, host string, query url.Values, header http.Header, hashedPayload, secret string) (canonical, signedHeaders, signature string) {
	values := map[string][]string{}
	if host != "" {
		values["host"] = []string{strings.TrimSpace(host)}
	}
	for name, vs := range header {
		n := strings.ToLower(name)
		if strings.HasPrefix(n, "x-acs-") || n == "content-type" {
			for _, v := range vs {
				values[n] = append(values[n], strings.TrimSpace(v))
			}
		}
	}
	var names []string
	for n := range values {
		names = append(names, n)
	}
	sort.Strings(names)
	var hdrs strings.Builder
	for _, n := range names {
		vs := values[n]
		sort.Strings(vs)
		hdrs.WriteString(n + ":" + strings.Join(vs, ",") + "\n")
	}
	signedHeaders = strings.Join(names, ";")
	canonical = strings.Join([]string{method, "/", specQuery(query), hdrs.String(), signedHeaders, hashedPayload}, "\n")
	sum := sha256.Sum256([]byte(canonical))
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte("ACS3-HMAC-SHA256\n" + hex.EncodeToString(sum[:])))
	return canonical, signedHeaders, hex.EncodeToString(mac.Sum(nil))
}

// specV1 computes the HMAC-SHA1 signature of signature V1.
func specV1(method string, params url.Values, secret string) (stringToSign, signature string) {
	stringToSign = method + "&" + specEncode("/") + "&" + specEncode(specQuery(params))
	mac := hmac.New(sha1.New, []byte(secret+"&"))
	mac.Write([]byte(stringToSign))
	return stringToSign, base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

var fuzzMethods = []string{"POST", "GET", "PUT", "DELETE"}

// fuzzParams builds parameters from three fuzzed pairs; a name given twice
// gets two values, in order.
func fuzzParams(kv ...string) url.Values {
	params := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		params[kv[i]] = append(params[kv[i]], kv[i+1])
	}
	return params
}

// headerValue keeps what an HTTP client can send in a header value: no
// control characters other than tab.
func headerValue(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return -1
		}
		return r
	}, s)
}

// FuzzV3Signature signs arbitrary parameters, headers and secrets with
// V3Request and checks canonical request, signed headers and signature
// against the reference, and that the query string sent parses back to
// what was signed.
func FuzzV3Signature(f *testing.F) {
	f.Add(uint8(0), "RegionId", "cn-hangzhou", "DesktopId", "ecd-bd53sfmysz8ir****", "NextToken", "AAAAAV3MpHK1AP0pfERHZN5pu6l3d+SWeOobbIlDLjwhjkTk",
		"x-acs-action", "DescribeImageModifiedRecords", "x-acs-security-token", "CAIS+sts/token=镜像 1", "ecd.cn-hangzhou.aliyuncs.com", "YourAccessKeySecret", []byte(""))
	f.Add(uint8(1), "a b", "c+d=e*f~g", "a b", "second value", "ü", "镜像 ☃", "X-Acs-Upper", "  padded\t", "content-type", "application/json", "host:8080", "", []byte("{}"))
	f.Add(uint8(0), "", "", "a_", "1", "a`", "2", "x-acs-", "", "x-other", "unsigned", "", "s\x00e\xffcret", []byte("\x00\xff"))
	f.Add(uint8(2), "%20", "%", "*", "'()!", "~", "/?#[]@", "x-acs-date", "2023-10-26T10:22:32Z", "x-acs-date", "2023-10-26T10:22:33Z", "h", "k", []byte("body"))
	f.Add(uint8(3), "\xff\xfe", "\x80", "k", "\xc3\x28", "v", "\t \n", "x-acs-a", "\u00a0nbsp inside\u00a0 only", "x-acs-b", "tab\there", "ecs.cn-shanghai.aliyuncs.com", "秘密", []byte(nil))

	f.Fuzz(func(t *testing.T, m uint8, k1, v1, k2, v2, k3, v3, h1, hv1, h2, hv2, host, secret string, payload []byte) {
		method := fuzzMethods[int(m)%len(fuzzMethods)]
		query := fuzzParams(k1, v1, k2, v2, k3, v3)
		// Names as given, in any case: a header map built by hand need not
		// be canonical, and two spellings of one name are one header.
		header := http.Header{}
		header[h1] = append(header[h1], headerValue(hv1))
		header[h2] = append(header[h2], headerValue(hv2))
		sum := sha256.Sum256(payload)
		hashed := hex.EncodeToString(sum[:])
		req := acs.V3Request{Method: method, Host: headerValue(host), Query: query, Header: header, HashedPayload: hashed}

		canonical, signedHeaders := req.CanonicalRequest()
		wantCanonical, wantSigned, wantSig := specV3(method, headerValue(host), query, header, hashed, secret)
		if canonical != wantCanonical {
			t.Fatalf("canonical request\n%q\nwant\n%q", canonical, wantCanonical)
		}
		if signedHeaders != wantSigned {
			t.Fatalf("signed headers %q, want %q", signedHeaders, wantSigned)
		}
		sig, signedHeaders2 := req.Signature(secret)
		if sig != wantSig || signedHeaders2 != wantSigned {
			t.Fatalf("signature %s (%s), want %s (%s)", sig, signedHeaders2, wantSig, wantSigned)
		}
		// The query the client sends is the canonical one: what the
		// upstream parses from it is what was signed.
		sent := acs.CanonicalQuery(query)
		parsed, err := url.ParseQuery(sent)
		if err != nil {
			t.Fatalf("the upstream could not parse the query %q: %v", sent, err)
		}
		if specQuery(parsed) != specQuery(query) {
			t.Fatalf("query %q parses to %v, want %v", sent, parsed, query)
		}
	})
}

// FuzzV1Signature checks V1StringToSign and V1Signature against the
// reference for arbitrary parameters and secrets.
func FuzzV1Signature(f *testing.F) {
	f.Add(uint8(0), "Action", "DescribeImageModifiedRecords", "SecurityToken", "CAIS+sts/token=镜像 1", "Timestamp", "2023-10-26T10:22:32Z", "testsecret")
	f.Add(uint8(1), "a b", "c+d=e*f~g", "a b", "again", "", "", "")
	f.Add(uint8(0), "%", "%25", "\xff", "\x00", "&=", "=&", "s\x00e\xffcret&")

	f.Fuzz(func(t *testing.T, m uint8, k1, v1, k2, v2, k3, v3, secret string) {
		method := fuzzMethods[int(m)%len(fuzzMethods)]
		params := fuzzParams(k1, v1, k2, v2, k3, v3)
		wantSTS, wantSig := specV1(method, params, secret)
		if got := acs.V1StringToSign(method, params); got != wantSTS {
			t.Fatalf("string to sign\n%q\nwant\n%q", got, wantSTS)
		}
		if got := acs.V1Signature(secret, method, params); got != wantSig {
			t.Fatalf("signature %s, want %s", got, wantSig)
		}
	})
}
