use std::time::{Duration, Instant};

use commands::Limits;

use crate::support::{ctx, on_both_stores, reserve, Backend};

on_both_stores!(
    an_idle_stream_parks_its_state_and_the_next_command_finds_it_in_the_cache,
    the_cache_of_idle_states_keeps_at_most_its_bound,
);

fn quickly_idle(cache_max_streams: usize) -> Limits {
    Limits {
        stream_idle_timeout: Duration::from_millis(50),
        cache_max_streams,
        ..Limits::default()
    }
}

/// Waits (bounded) until no stream of the inventory handler has a running task.
async fn all_idle(env: &crate::support::Env) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.commands.inventory().live_streams() > 0 {
        assert!(Instant::now() < deadline, "stream tasks did not retire");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn an_idle_stream_parks_its_state_and_the_next_command_finds_it_in_the_cache(
    backend: Backend,
) {
    let env = backend.env_with(quickly_idle(16)).await;
    env.receive("PARK", 5).await;
    all_idle(&env).await;
    let inventory = env.commands.inventory();
    assert_eq!(inventory.cached_streams(), 1);

    let reserved = inventory.execute(reserve("PARK", 2), &ctx()).await.unwrap();

    assert_eq!(reserved.stream_version, 2);
    assert_eq!(
        inventory.stats().loads,
        1,
        "the second task took the cached state"
    );
    assert_eq!(inventory.stats().events_read, 0);
    assert_eq!(inventory.live_streams(), 1);
    assert_eq!(inventory.cached_streams(), 0);
}

async fn the_cache_of_idle_states_keeps_at_most_its_bound(backend: Backend) {
    let env = backend.env_with(quickly_idle(2)).await;
    for code in ["C-1", "C-2", "C-3"] {
        env.receive(code, 1).await;
    }
    all_idle(&env).await;

    assert_eq!(env.commands.inventory().cached_streams(), 2);
    for code in ["C-1", "C-2", "C-3"] {
        assert_eq!(env.inventory(code).await.on_hand(), 1);
    }
}
