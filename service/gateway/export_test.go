package gateway

import "connectrpc.com/connect"

// RecordsCodec is the "proto" codec of the service handler.
var RecordsCodec connect.Codec = recordsCodec{}

// EncodesByHand reports whether the codec encodes message with its
// hand-written encoder rather than with proto.
func EncodesByHand(message any) bool {
	_, ok := appendPage(nil, message)
	return ok
}

// CheckEncodedFields returns how the generated messages differ from the
// fields the hand-written encoder writes, or nil.
var CheckEncodedFields = checkEncodedFields
