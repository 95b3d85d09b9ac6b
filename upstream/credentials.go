package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/aliyun/credentials-go/credentials"
)

// Credentials are the AccessKey pair, and for STS the security token, that
// sign one request. They format as a redacted string so that a stray %v or
// slog attribute never prints the secret.
type Credentials struct {
	AccessKeyID     string
	AccessKeySecret string
	SecurityToken   string
}

// String shows the AccessKeyId only.
func (c Credentials) String() string {
	if c.SecurityToken != "" {
		return "Credentials{AccessKeyID: " + c.AccessKeyID + ", AccessKeySecret: <redacted>, SecurityToken: <redacted>}"
	}
	return "Credentials{AccessKeyID: " + c.AccessKeyID + ", AccessKeySecret: <redacted>}"
}

// GoString is String, so %#v redacts too.
func (c Credentials) GoString() string { return c.String() }

// LogValue logs the AccessKeyId only.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(slog.String("access_key_id", c.AccessKeyID), slog.Bool("sts", c.SecurityToken != ""))
}

// CredentialsProvider returns the credentials for the next request. The
// client calls it once per attempt, so a provider whose credentials expire
// (STS, RAM roles, OIDC) can refresh them in time.
type CredentialsProvider interface {
	Credentials(ctx context.Context) (Credentials, error)
}

// StaticCredentials is a provider of fixed credentials. It formats
// redacted, as Credentials does.
type StaticCredentials Credentials

// Credentials returns c.
func (c StaticCredentials) Credentials(context.Context) (Credentials, error) {
	return Credentials(c), nil
}

// String shows the AccessKeyId only.
func (c StaticCredentials) String() string { return Credentials(c).String() }

// GoString is String, so %#v redacts too.
func (c StaticCredentials) GoString() string { return Credentials(c).String() }

// LogValue logs the AccessKeyId only.
func (c StaticCredentials) LogValue() slog.Value { return Credentials(c).LogValue() }

// ErrNoCredentials reports that no credentials could be obtained; the
// gateway, not its caller, is misconfigured.
var ErrNoCredentials = errors.New("no Alibaba Cloud credentials")

// CredentialsLibrary adapts a credential of github.com/aliyun/credentials-go,
// which caches and refreshes expiring credentials inside GetCredential.
type CredentialsLibrary struct {
	Credential credentials.Credential
}

// DefaultCredentials returns the standard Alibaba Cloud credentials chain:
// environment variables, OIDC/RRSA, the CLI profile, the credentials file,
// the ECS RAM role and ALIBABA_CLOUD_CREDENTIALS_URI, in that order.
func DefaultCredentials() (CredentialsLibrary, error) {
	c, err := credentials.NewCredential(nil)
	if err != nil {
		return CredentialsLibrary{}, fmt.Errorf("%w: %v", ErrNoCredentials, err)
	}
	return CredentialsLibrary{Credential: c}, nil
}

// Credentials fetches the current credentials from the library.
func (l CredentialsLibrary) Credentials(context.Context) (Credentials, error) {
	m, err := l.Credential.GetCredential()
	if err != nil {
		return Credentials{}, fmt.Errorf("%w: %v", ErrNoCredentials, err)
	}
	c := Credentials{
		AccessKeyID:     deref(m.AccessKeyId),
		AccessKeySecret: deref(m.AccessKeySecret),
		SecurityToken:   deref(m.SecurityToken),
	}
	if c.AccessKeyID == "" || c.AccessKeySecret == "" {
		return Credentials{}, fmt.Errorf("%w: the provider returned an empty AccessKey", ErrNoCredentials)
	}
	return c, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
