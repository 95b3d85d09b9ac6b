package upstream

import (
	"errors"
	"fmt"
	"net"
)

// UnknownRegionError reports a region that has no ECD endpoint: the host
// name of its regional endpoint (ecd.<region>.aliyuncs.com) does not exist
// in DNS, as for a typo such as cn-hangzou. Another attempt would get the
// same answer, so it is never retried, and it is the caller's mistake,
// not an outage.
type UnknownRegionError struct {
	// Region is the region id the caller named.
	Region string
	// Host is the endpoint host that does not resolve.
	Host string
	// Err is the resolver's answer.
	Err error
}

func (e *UnknownRegionError) Error() string {
	return fmt.Sprintf("region %q has no ECD endpoint: %s does not resolve (%v)", e.Region, e.Host, e.Err)
}

func (e *UnknownRegionError) Unwrap() error { return e.Err }

// unknownRegion returns an [*UnknownRegionError] when err, the failure to
// reach the endpoint of region, is DNS saying that the regional host does
// not exist; else nil. With an endpoint set by [WithEndpoint] the host
// does not depend on the region, and a host that does not resolve is the
// operator's network problem: nil then too.
func (c *Client) unknownRegion(region string, err error) error {
	if c.endpoint != "" {
		return nil
	}
	dnsErr, ok := errors.AsType[*net.DNSError](err)
	if !ok || !dnsErr.IsNotFound {
		return nil
	}
	return &UnknownRegionError{Region: region, Host: "ecd." + region + ".aliyuncs.com", Err: dnsErr}
}

func isUnknownRegion(err error) bool {
	_, ok := errors.AsType[*UnknownRegionError](err)
	return ok
}
