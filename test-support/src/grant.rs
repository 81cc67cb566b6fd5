//! Pairs issued by the Keap sandbox, as the grant the OAuth callback's code exchange yields.

use std::time::Duration;

use keap_relay::SecretString;
use keap_relay::token::TokenGrant;
use keap_sandbox::{Sandbox, TokenResponse};

/// A pair the sandbox issued as a grant; the account is the part of `scope` after `|`.
pub fn from_pair(pair: TokenResponse) -> TokenGrant {
    TokenGrant {
        access_token: SecretString::from(pair.access_token),
        refresh_token: SecretString::from(pair.refresh_token),
        expires_in: Duration::from_secs(pair.expires_in),
        account: pair.scope.split_once('|').map(|(_, account)| account.to_owned()),
        scope: pair.scope,
    }
}

/// A fresh pair for the sandbox's default client (`Sandbox::mint_grant`), as a grant.
pub fn minted(sandbox: &Sandbox) -> TokenGrant {
    from_pair(sandbox.mint_grant(keap_sandbox::DEFAULT_CLIENT_ID))
}
