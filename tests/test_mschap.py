"""MS-CHAP primitives against the published vectors of RFC 2759 §9.2 and RFC 3079 §3.5.3."""

from twisted.trial import unittest

from vpnaaa import mschap

# RFC 2759 §9.2 "Sample Data".
USER = b"User"
PASSWORD = "clientPass"
AUTH_CHALLENGE = bytes.fromhex("5B5D7C7D7B3F2F3E3C2C602132262628")
PEER_CHALLENGE = bytes.fromhex("21402324255E262A28295F2B3A337C7E")
CHALLENGE = bytes.fromhex("D02E4386BCE91226")
PASSWORD_HASH = bytes.fromhex("44EBBA8D5312B8D611474411F56989AE")
NT_RESPONSE = bytes.fromhex("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF")
PASSWORD_HASH_HASH = bytes.fromhex("41C00C584BD2D91C4017A2A12FA59F3F")
AUTHENTICATOR_RESPONSE = b"S=407A5589115FD0D6209F510FE9C04566932CDA56"

# RFC 3079 §3.5.3 "Sample Key Derivations" (128-bit keys), same inputs.
MASTER_KEY = bytes.fromhex("FDECE3717A8C838CB388E527AE3CDD31")
SEND_START_KEY_128 = bytes.fromhex("8B7CDC149B993A1BA118CB153F56DCCB")


class Rfc2759Vectors(unittest.TestCase):
    def test_nt_password_hash(self):
        self.assertEqual(mschap.nt_password_hash(PASSWORD), PASSWORD_HASH)

    def test_hash_nt_password_hash(self):
        self.assertEqual(mschap.hash_nt_password_hash(PASSWORD_HASH), PASSWORD_HASH_HASH)

    def test_challenge_hash(self):
        self.assertEqual(mschap.challenge_hash(PEER_CHALLENGE, AUTH_CHALLENGE, USER), CHALLENGE)

    def test_challenge_response(self):
        self.assertEqual(mschap.challenge_response(CHALLENGE, PASSWORD_HASH), NT_RESPONSE)

    def test_generate_nt_response(self):
        self.assertEqual(
            mschap.generate_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, USER, PASSWORD_HASH),
            NT_RESPONSE,
        )

    def test_authenticator_response(self):
        self.assertEqual(
            mschap.generate_authenticator_response(
                PASSWORD_HASH, NT_RESPONSE, PEER_CHALLENGE, AUTH_CHALLENGE, USER
            ),
            AUTHENTICATOR_RESPONSE,
        )

    def test_verify_accepts_the_sample_and_rejects_a_flipped_bit(self):
        self.assertTrue(
            mschap.verify_nt_response(
                AUTH_CHALLENGE, PEER_CHALLENGE, USER, PASSWORD_HASH, NT_RESPONSE
            )
        )
        bad = bytes([NT_RESPONSE[0] ^ 1]) + NT_RESPONSE[1:]
        self.assertFalse(
            mschap.verify_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, USER, PASSWORD_HASH, bad)
        )


class Rfc3079Vectors(unittest.TestCase):
    def test_master_key(self):
        self.assertEqual(mschap.master_key(PASSWORD_HASH, NT_RESPONSE), MASTER_KEY)

    def test_send_start_key_is_the_servers_send_key(self):
        """§3.5.3 derives SendStartKey128 with IsSend and IsServer both TRUE (Magic3)."""
        self.assertEqual(
            mschap.asymmetric_start_key(MASTER_KEY, is_send=True, is_server=True),
            SEND_START_KEY_128,
        )

    def test_client_receive_key_equals_server_send_key(self):
        """§3.3: the client's receive key is the server's send key, and the reverse."""
        self.assertEqual(
            mschap.asymmetric_start_key(MASTER_KEY, is_send=False, is_server=False),
            SEND_START_KEY_128,
        )
        send, recv = mschap.server_mppe_keys(PASSWORD_HASH, NT_RESPONSE)
        self.assertEqual(send, SEND_START_KEY_128)
        self.assertEqual(
            recv, mschap.asymmetric_start_key(MASTER_KEY, is_send=True, is_server=False)
        )
        self.assertNotEqual(send, recv)
