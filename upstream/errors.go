package upstream

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// APIError is an error answer of the upstream: any 4xx or 5xx response,
// parsed from its JSON body. Map on Code, not on HTTPStatus: statuses for a
// code vary between Alibaba Cloud products.
type APIError struct {
	// HTTPStatus is the response's status code.
	HTTPStatus int
	// Code is the upstream error code, e.g. "Throttling.User". It is empty
	// when the body was not the usual error JSON.
	Code string
	// Message is the upstream's explanation. For signature errors it may
	// quote the string to sign, with the STS token in it: it is not for
	// the gateway's callers or logs, and Error leaves it out.
	Message string
	// RequestID identifies the request for an Alibaba Cloud support ticket.
	RequestID string
	// HostID is the endpoint host that answered.
	HostID string
	// Recommend is the upstream's troubleshooting URL.
	Recommend string
	// RetryAfter is the throttling hint of the x-ratelimit headers, when
	// the upstream sent one.
	RetryAfter string
}

func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString("ecd ")
	b.WriteString(Action)
	if e.Code != "" {
		b.WriteString(": ")
		b.WriteString(e.Code)
	}
	fmt.Fprintf(&b, " (HTTP %d)", e.HTTPStatus)
	// The message of a signature or credentials error may quote the string
	// to sign, with the AccessKeyId and STS token in it: never print it.
	if k := e.Kind(); e.Message != "" && k != KindGatewaySignature && k != KindGatewayCredentials {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.RequestID != "" {
		b.WriteString(" (RequestId ")
		b.WriteString(e.RequestID)
		b.WriteString(")")
	}
	return b.String()
}

// Kind classifies an upstream error code by who must act on it.
type Kind int

const (
	// KindUnknown is a code this client does not recognise.
	KindUnknown Kind = iota
	// KindThrottled is flow control: retry later.
	KindThrottled
	// KindUnavailable is a transient upstream fault (ServiceUnavailable,
	// InternalError, other 5xx): retry.
	KindUnavailable
	// KindGatewayCredentials means the upstream rejected the gateway's own
	// AccessKey or STS token: the gateway's operator must act, not the
	// caller.
	KindGatewayCredentials
	// KindGatewaySignature means the gateway signed the request wrongly or
	// its clock is off: a gateway fault.
	KindGatewaySignature
	// KindPermissionDenied is a RAM policy denying the gateway's identity.
	KindPermissionDenied
	// KindInvalidArgument is a parameter the upstream rejected.
	KindInvalidArgument
	// KindNotFound is a resource (a desktop) that does not exist.
	KindNotFound
)

// Kind classifies e by its code (falling back to the HTTP status).
func (e *APIError) Kind() Kind {
	c := e.Code
	switch {
	case c == "Throttling" || strings.HasPrefix(c, "Throttling."):
		return KindThrottled
	case c == "ServiceUnavailable" || c == "InternalError" || strings.HasPrefix(c, "ServiceUnavailable.") || strings.HasPrefix(c, "InternalError."):
		return KindUnavailable
	case strings.HasPrefix(c, "InvalidAccessKeyId") || strings.HasPrefix(c, "InvalidSecurityToken"):
		return KindGatewayCredentials
	case c == "SignatureDoesNotMatch" || c == "IncompleteSignature" || c == "SignatureNonceUsed" ||
		strings.HasPrefix(c, "InvalidTimeStamp") || c == "MissingSignature":
		return KindGatewaySignature
	case strings.HasPrefix(c, "Forbidden"):
		return KindPermissionDenied
	case c == "InvalidRegionId" || strings.HasPrefix(c, "InvalidRegion"):
		return KindInvalidArgument
	case strings.HasSuffix(c, ".NotFound"):
		return KindNotFound
	case strings.HasPrefix(c, "Missing") || strings.HasPrefix(c, "Invalid"):
		return KindInvalidArgument
	case e.HTTPStatus == http.StatusTooManyRequests:
		return KindThrottled
	case e.HTTPStatus >= 500:
		return KindUnavailable
	}
	return KindUnknown
}

// ErrMalformedResponse reports an upstream answer that could not be
// understood: not JSON, wrong types, impossible values.
var ErrMalformedResponse = errors.New("malformed upstream response")

// PaginationError reports that the upstream's NextToken sequence went
// wrong: a token repeated, so following it would loop forever.
type PaginationError struct {
	// Page is the 1-based number of the page that returned the token.
	Page int
	// FirstSeen is the page that first returned the same token.
	FirstSeen int
}

func (e *PaginationError) Error() string {
	if e.FirstSeen == e.Page-1 {
		return fmt.Sprintf("upstream NextToken did not advance: page %d returned the same token as page %d; stopped instead of looping forever", e.Page, e.FirstSeen)
	}
	return fmt.Sprintf("upstream NextToken cycle: page %d returned the token already returned by page %d; stopped instead of looping forever", e.Page, e.FirstSeen)
}
