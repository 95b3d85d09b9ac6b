// Package service implements ecd.imagerecords.v1.ImageRecordsService on top
// of the upstream client: it validates requests before any upstream call,
// converts upstream pages to typed records, streams every page of a desktop
// with backpressure, streams a fleet of desktops with bounded concurrency
// (fleet.go), follows a desktop's changes through one shared poller per
// desktop (watch.go, watch_view.go), and maps upstream failures to Connect
// codes with google.rpc error details. Every token it hands out is framed
// in token.go. It knows nothing about HTTP servers or signing.
package service
