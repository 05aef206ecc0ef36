//! Address-validation tokens (the handshake's cookies): whatever bytes a client echoes, checking
//! them never panics and never accepts a token this key did not issue for that very binding.
//!
//! The input chooses the key's secret, the clocks, the client's address and connection IDs, a
//! presented token, and one byte to change in a genuine token. Checked for every input:
//! - a genuine Retry token and a genuine address token pass at their issue time;
//! - the same token with any one byte changed, or checked for another address, other IDs or
//!   under another key, is refused (an HMAC forgery in one try would be news);
//! - the presented bytes are refused unless they are exactly the genuine token;
//! - a token is never accepted after its lifetime, nor (beyond the allowed clock skew) before
//!   it was issued.
#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use ferry_protocol::wire::cookie::{TokenError, TokenKey, TOKEN_LEN};
use ferry_protocol::ConnectionId;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// Two addresses from the input that differ (the second derived from the first if need be).
fn addresses(u: &mut Unstructured<'_>) -> Result<(SocketAddr, SocketAddr)> {
    let ip: IpAddr = if u.arbitrary()? {
        IpAddr::V4(u32::to_be_bytes(u.arbitrary()?).into())
    } else {
        IpAddr::V6(Ipv6Addr::from(u128::to_be_bytes(u.arbitrary()?)))
    };
    let a = SocketAddr::new(ip, u.arbitrary()?);
    let other = SocketAddr::new(ip, a.port().wrapping_add(1));
    Ok((a, other))
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let secret: [u8; 32] = u.arbitrary()?;
    // Wall clock at the key's epoch: anything up to about 500 years past 1970.
    let epoch_unix = Duration::from_millis(u.int_in_range(0..=1u64 << 44)?);
    let issued_after = Duration::from_millis(u.int_in_range(0..=1u64 << 40)?);
    let lifetime = Duration::from_millis(u.int_in_range(1..=1u64 << 36)?);
    let (addr, other_addr) = addresses(u)?;
    let client_cid = ConnectionId(u.arbitrary()?);
    let orig_dcid = ConnectionId(u.arbitrary()?);
    let flip_at = u.choose_index(TOKEN_LEN)?;
    let flip_with: u8 = u.int_in_range(1..=255)?;
    let presented: Vec<u8> = u.arbitrary()?;

    let epoch = Instant::now();
    let key = TokenKey::new(secret, epoch, epoch_unix);
    let now = epoch + issued_after;

    let retry = key.issue(now, addr, client_cid, orig_dcid);
    let check_retry = |t: &[u8], at: Instant, a: SocketAddr, c: ConnectionId, d: ConnectionId| {
        key.validate(at, t, a, c, d, lifetime)
    };
    assert_eq!(
        check_retry(&retry, now, addr, client_cid, orig_dcid),
        Ok(())
    );
    let mut forged = retry;
    forged[flip_at] ^= flip_with;
    assert!(check_retry(&forged, now, addr, client_cid, orig_dcid).is_err());
    assert_eq!(
        check_retry(&retry, now, other_addr, client_cid, orig_dcid),
        Err(TokenError::Invalid)
    );
    if client_cid != orig_dcid {
        assert_eq!(
            check_retry(&retry, now, addr, orig_dcid, client_cid),
            Err(TokenError::Invalid)
        );
    }
    assert_eq!(
        check_retry(
            &retry,
            now + lifetime + Duration::from_millis(1),
            addr,
            client_cid,
            orig_dcid
        ),
        Err(TokenError::Expired)
    );
    if presented[..] != retry[..] {
        assert!(check_retry(&presented, now, addr, client_cid, orig_dcid).is_err());
    }
    let mut other_secret = secret;
    other_secret[0] ^= 1;
    let other_key = TokenKey::new(other_secret, epoch, epoch_unix);
    assert_eq!(
        other_key.validate(now, &retry, addr, client_cid, orig_dcid, lifetime),
        Err(TokenError::Invalid)
    );

    let token = key.issue_address_token(now, addr);
    assert_eq!(
        key.validate_address_token(now, &token, addr, lifetime),
        Ok(())
    );
    // Bound to the IP address only: another port is fine, another IP is not.
    assert_eq!(
        key.validate_address_token(now, &token, other_addr, lifetime),
        Ok(())
    );
    let mut other_ip = addr;
    other_ip.set_ip(match addr.ip() {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) ^ 1).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) ^ 1).into()),
    });
    assert_eq!(
        key.validate_address_token(now, &token, other_ip, lifetime),
        Err(TokenError::Invalid)
    );
    let mut forged = token;
    forged[flip_at] ^= flip_with;
    assert!(key
        .validate_address_token(now, &forged, addr, lifetime)
        .is_err());
    // The two kinds never stand in for each other.
    assert!(key
        .validate_address_token(now, &retry, addr, lifetime)
        .is_err());
    assert!(check_retry(&token, now, addr, client_cid, orig_dcid).is_err());
    if presented[..] != token[..] {
        assert!(key
            .validate_address_token(now, &presented, addr, lifetime)
            .is_err());
    }
    // A token presented before it was issued (a clock far behind) is refused, not trusted.
    if issued_after > Duration::from_secs(3) {
        assert!(key
            .validate_address_token(epoch, &token, addr, lifetime)
            .is_err());
    }
    let _ = TokenKey::kind_of(&presented);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
