//! The `refresh` function: the EventBridge schedule's token rotation and health report.
//! `main.rs` builds the dependencies once ([`Deps::from_app`]); [`handle`] is plain async code.

pub mod handler;

pub use handler::{
    CredentialCheck, Deps, MetricsSink, RefreshDeps, RefreshError, RefreshSummary, RunStatus, StdoutMetrics, handle,
};

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keap_relay::app::App;
    use keap_relay::config::Config;
    use keap_relay::store::memory::MemoryStore;

    use super::Deps;

    fn deps(config: Config) -> Deps {
        let config = Config {
            app_secret_id: "app".into(),
            token_secret_id: "token".into(),
            ..config
        };
        Deps::from_app(&App::with_parts(config, Arc::new(MemoryStore::new()), None).unwrap())
    }

    #[test]
    fn the_start_page_and_function_name_come_from_the_configuration() {
        let redirect = Some("https://relay.example.com/prod/oauth/callback".to_owned());
        let derived = deps(Config {
            redirect_uri: redirect.clone(),
            ..Config::defaults()
        });
        assert_eq!(
            derived.start_url.as_deref(),
            Some("https://relay.example.com/prod/oauth/start")
        );
        assert_eq!(derived.function_name, "refresh");

        let set = deps(Config {
            redirect_uri: redirect,
            start_url: Some("https://admin.example.com/connect".into()),
            function_name: Some("keap-relay-refresh".into()),
            ..Config::defaults()
        });
        assert_eq!(set.start_url.as_deref(), Some("https://admin.example.com/connect"));
        assert_eq!(set.function_name, "keap-relay-refresh");
        assert_eq!(deps(Config::defaults()).start_url, None);
    }
}
