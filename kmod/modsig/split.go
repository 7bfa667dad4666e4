package modsig

import (
	"encoding/binary"
	"fmt"
)

// Trailer errors are prefixed so callers can tell a bad trailer from a bad
// CMS in messages.
const trailerPrefix = "signature trailer: "

// Split separates a module into its signed content and its signature. It
// reads the trailer as the kernel's module_sig_check and mod_check_sig do:
//
//   - no Magic at the end: (data, nil, nil), an unsigned module;
//   - a trailer that the kernel would refuse (sig_len not fitting the
//     module, id_type other than PKCS#7, non-zero reserved bytes): nil
//     content and an error naming the field;
//   - a valid trailer whose CMS does not parse: the content and an error.
//
// content and the returned Signature alias data.
func Split(data []byte) (content []byte, sig *Signature, err error) {
	n, err := splitTrailer(data)
	if err != nil {
		return nil, nil, err
	}
	if n < 0 {
		return data, nil, nil
	}
	end := len(data) - len(Magic) - TrailerSize
	content = data[:n]
	sig, err = Parse(data[n:end])
	if err != nil {
		return content, nil, err
	}
	return content, sig, nil
}

// ContentLen returns the length of the signed content of data, or -1 when
// data carries no signature magic. Only the trailer is checked, not the CMS.
func ContentLen(data []byte) (int, error) {
	return splitTrailer(data)
}

// splitTrailer checks the trailer and returns the content length, -1 when
// there is no magic.
func splitTrailer(data []byte) (int, error) {
	if len(data) < len(Magic) || string(data[len(data)-len(Magic):]) != Magic {
		return -1, nil
	}
	// mod_verify_sig: the module left after the magic must be longer than
	// the struct.
	modlen := len(data) - len(Magic)
	if modlen <= TrailerSize {
		return 0, fmt.Errorf(trailerPrefix+"module of %d bytes is too short to hold the %d-byte signature struct before the magic", len(data), TrailerSize)
	}
	t := data[modlen-TrailerSize : modlen]
	algo, hash, idType, signerLen, keyIDLen := t[0], t[1], t[2], t[3], t[4]
	sigLen := binary.BigEndian.Uint32(t[8:12])
	// mod_check_sig, in the kernel's order: length, id_type, the rest.
	if uint64(sigLen) >= uint64(modlen-TrailerSize) {
		return 0, fmt.Errorf(trailerPrefix+"sig_len %d exceeds module size %d (at most %d bytes fit before the trailer)", sigLen, len(data), modlen-TrailerSize-1)
	}
	if idType != idPKCS7 {
		return 0, fmt.Errorf(trailerPrefix+"id_type %d is not PKCS#7 (%d)", idType, idPKCS7)
	}
	switch {
	case algo != 0:
		return 0, fmt.Errorf(trailerPrefix+"algo is %d, must be 0 for PKCS#7", algo)
	case hash != 0:
		return 0, fmt.Errorf(trailerPrefix+"hash is %d, must be 0 for PKCS#7", hash)
	case signerLen != 0:
		return 0, fmt.Errorf(trailerPrefix+"signer_len is %d, must be 0 for PKCS#7", signerLen)
	case keyIDLen != 0:
		return 0, fmt.Errorf(trailerPrefix+"key_id_len is %d, must be 0 for PKCS#7", keyIDLen)
	case t[5] != 0 || t[6] != 0 || t[7] != 0:
		return 0, fmt.Errorf(trailerPrefix+"reserved bytes are % x, must be zero", t[5:8])
	case sigLen == 0:
		// The kernel passes this to its PKCS#7 parser, which fails on
		// empty data.
		return 0, fmt.Errorf(trailerPrefix + "sig_len is 0")
	}
	return modlen - TrailerSize - int(sigLen), nil
}

// AppendTrailer appends the module_signature struct for a CMS of cmsLen
// bytes and Magic to dst.
func AppendTrailer(dst []byte, cmsLen int) []byte {
	dst = append(dst, 0, 0, idPKCS7, 0, 0, 0, 0, 0)
	dst = binary.BigEndian.AppendUint32(dst, uint32(cmsLen))
	return append(dst, Magic...)
}
