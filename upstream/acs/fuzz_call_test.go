package acs_test

import (
	"net/http"
	"net/url"
	"reflect"
	"testing"
	"time"

	"github.com/imagerecords/imagerecords/upstream/acs"
)

// FuzzCallSignV3MatchesV3Request signs arbitrary calls with Call.SignV3,
// the client's fast path, and requires what V3Request.Signature (which the
// vectors and the official implementation check) signs for the request
// SignV3 describes: the same Authorization, the headers set as given, and
// the canonical query. It also signs twice in a row with two secrets, so
// that a signer reused with a stale key fails.
func FuzzCallSignV3MatchesV3Request(f *testing.F) {
	f.Add("DescribeImageModifiedRecords", "2020-09-30", "DesktopId", "ecd-bd53sfmysz8ir****", "NextToken", "AAAAAV3MpHK1AP0pfERHZN5pu6l3d+SWeOobbIlDLjwhjkTk",
		int64(1698315752), "3156853299f313e23d1673dc12e1703d", "ecd.cn-hangzhou.aliyuncs.com", "YourAccessKeyId", "YourAccessKeySecret", "", "other")
	f.Add("DescribeImageModifiedRecords", "2020-09-30", "a b", "c+d=e*f~g", "a b", "again", int64(-62135596800), " nonce\t", "", "STS.id", "秘密\xff", "CAIS+sts/token==", "")
	f.Add(" Action ", "\u00a0v\u3000", "", "", "\xff", "\x00", int64(253402300799), "", " host:8080 ", " id ", "", " tok ", "YourAccessKeySecret")

	f.Fuzz(func(t *testing.T, action, version, k1, v1, k2, v2 string, unix int64, nonce, host, keyID, secret, token, secret2 string) {
		action, version, nonce, host = headerValue(action), headerValue(version), headerValue(nonce), headerValue(host)
		keyID, token = headerValue(keyID), headerValue(token)
		params := fuzzParams(k1, v1, k2, v2)
		call := acs.Call{Action: action, Version: version, Params: params, Timestamp: time.Unix(unix, 0), Nonce: nonce}
		for _, secret := range []string{secret, secret2} {
			creds := acs.Credentials{AccessKeyID: keyID, AccessKeySecret: secret, SecurityToken: token}
			rawQuery, header := call.SignV3(host, creds)

			want := http.Header{}
			want.Set("x-acs-action", action)
			want.Set("x-acs-version", version)
			want.Set("x-acs-date", call.Timestamp.UTC().Format(acs.TimestampLayout))
			want.Set("x-acs-signature-nonce", nonce)
			want.Set("x-acs-content-sha256", acs.EmptyPayloadHash)
			if token != "" {
				want.Set("x-acs-accesskey-id", keyID)
				want.Set("x-acs-security-token", token)
			}
			sig, signed := acs.V3Request{
				Method: http.MethodPost, Host: host, Query: params, Header: want, HashedPayload: acs.EmptyPayloadHash,
			}.Signature(secret)
			want.Set("Authorization", acs.V3Authorization(keyID, signed, sig))
			if !reflect.DeepEqual(header, want) {
				t.Fatalf("SignV3 headers\n%q\nwant\n%q", header, want)
			}
			if q := acs.CanonicalQuery(params); rawQuery != q {
				t.Fatalf("SignV3 query %q, want %q", rawQuery, q)
			}
			if !reflect.DeepEqual(params, fuzzParams(k1, v1, k2, v2)) {
				t.Fatalf("SignV3 changed the parameters: %v", params)
			}
		}
	})
}

// FuzzCallSignV1MatchesV1Signature signs arbitrary calls with
// Call.SignV1 and requires a body that parses back to every parameter
// and ends with the signature V1Signature computes over them.
func FuzzCallSignV1MatchesV1Signature(f *testing.F) {
	f.Add("DescribeImageModifiedRecords", "2020-09-30", "DesktopId", "ecd-bd53sfmysz8ir****", "NextToken", "AAAAAV3MpHK1AP0pfERHZN5pu6l3d+SWeOobbIlDLjwhjkTk",
		int64(1456231584), "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf", "testid", "testsecret", "", uint8(0))
	f.Add("a b", "c+d", "a b", "镜像 ☃", "\xff", "\x00&=", int64(0), "n", "id", "秘密\xff&", "CAIS+tok/=", uint8(1))

	f.Fuzz(func(t *testing.T, action, version, k1, v1, k2, v2 string, unix int64, nonce, keyID, secret, token string, m uint8) {
		method := fuzzMethods[int(m)%len(fuzzMethods)]
		params := fuzzParams(k1, v1, k2, v2)
		call := acs.Call{Action: action, Version: version, Params: params, Timestamp: time.Unix(unix, 0), Nonce: nonce}
		creds := acs.Credentials{AccessKeyID: keyID, AccessKeySecret: secret, SecurityToken: token}
		body := call.SignV1(method, creds)

		all := url.Values{}
		for k, vs := range params {
			all[k] = vs
		}
		for k, v := range map[string]string{
			"Action": action, "Version": version, "Format": "JSON", "AccessKeyId": keyID,
			"SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0", "SignatureNonce": nonce,
			"Timestamp": call.Timestamp.UTC().Format(acs.TimestampLayout),
		} {
			all.Set(k, v)
		}
		if token != "" {
			all.Set("SecurityToken", token)
		}
		want := acs.CanonicalQuery(all) + "&Signature=" + acs.PercentEncode(acs.V1Signature(secret, method, all))
		if body != want {
			t.Fatalf("SignV1 body\n%q\nwant\n%q", body, want)
		}
		if !reflect.DeepEqual(params, fuzzParams(k1, v1, k2, v2)) {
			t.Fatalf("SignV1 changed the parameters: %v", params)
		}
	})
}

// TestCallSignV3ConcurrentSecrets signs one call with two secrets from
// several goroutines at once and checks every Authorization against the
// reference: pooled signers keyed with one secret must never sign with
// it for the other.
func TestCallSignV3ConcurrentSecrets(t *testing.T) {
	t.Parallel()
	date, err := time.Parse(acs.TimestampLayout, vectorDate)
	if err != nil {
		t.Fatal(err)
	}
	call := acs.Call{Action: "DescribeImageModifiedRecords", Version: "2020-09-30", Params: ecdQuery(), Timestamp: date, Nonce: vectorNonce}
	const host = "ecd.cn-hangzhou.aliyuncs.com"
	secrets := []string{"YourAccessKeySecret", "another-secret"}
	want := make([]string, len(secrets))
	for i, secret := range secrets {
		header := http.Header{}
		header.Set("x-acs-action", call.Action)
		header.Set("x-acs-version", call.Version)
		header.Set("x-acs-date", vectorDate)
		header.Set("x-acs-signature-nonce", vectorNonce)
		header.Set("x-acs-content-sha256", acs.EmptyPayloadHash)
		_, signed, sig := specV3(http.MethodPost, host, ecdQuery(), header, acs.EmptyPayloadHash, secret)
		want[i] = acs.V3Authorization("YourAccessKeyId", signed, sig)
	}
	if published := acs.V3Authorization("YourAccessKeyId", plainSigned, vectorB); want[0] != published {
		t.Fatalf("reference Authorization %s, want vector B's %s", want[0], published)
	}
	const goroutines, rounds = 8, 200
	errs := make(chan string, goroutines)
	for g := range goroutines {
		go func() {
			for r := range rounds {
				i := (g + r) % len(secrets)
				_, header := call.SignV3(host, acs.Credentials{AccessKeyID: "YourAccessKeyId", AccessKeySecret: secrets[i]})
				if got := header.Get("Authorization"); got != want[i] {
					errs <- "secret " + secrets[i] + ": Authorization " + got + ", want " + want[i]
					return
				}
			}
			errs <- ""
		}()
	}
	for range goroutines {
		if msg := <-errs; msg != "" {
			t.Error(msg)
		}
	}
}
