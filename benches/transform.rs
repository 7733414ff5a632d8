//! Transform alone: validate + 2 masks + 2 seals per event, as `Transformer::prepare` does it for
//! a batch of distinct events. Run with `cargo bench --bench transform`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use etl::crypto::{
    quarantine_key_pair, DataKey, Masker, QuarantineSealer, Sealer, UserKey, UserKeys, KEY_LEN,
    USER_KEY_LEN,
};
use etl::domain::Message;
use etl::pipeline::batch::ClaimKind;
use etl::pipeline::vault_state::VaultState;
use etl::pipeline::Transformer;
use etl::synthetic::{Generator, SyntheticOptions};

const BATCH: usize = 1000;

// The allocator the `etl` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn transform(c: &mut Criterion) {
    let key =
        |byte| DataKey::from_plaintext(1, vec![byte; KEY_LEN]).unwrap_or_else(|| unreachable!());
    let quarantine = QuarantineSealer::from_public_key(1, &quarantine_key_pair(&key(3)).1)
        .unwrap_or_else(|| unreachable!());
    let users = DataKey::from_plaintext(1, vec![4; USER_KEY_LEN])
        .and_then(|key| UserKey::new(&key))
        .unwrap_or_else(|| unreachable!());
    let transformer = Transformer::new(
        Masker::new(&key(1)),
        UserKeys::new(users, Vec::new()),
        Sealer::new(&key(2)),
        quarantine,
    );
    let messages: Vec<Message> = Generator::new(SyntheticOptions {
        count: BATCH,
        duplicate_share: 0.0,
        malformed_share: 0.0,
        seed: Some(1),
        ..SyntheticOptions::default()
    })
    .enumerate()
    .map(|(i, body)| Message {
        id: format!("m-{i}"),
        body,
        sent_timestamp: Some("1709251200000".into()),
        receive_count: Some(1),
        line: None,
    })
    .collect();
    let now = chrono::Utc::now();
    // Nothing is known to be in the vault yet: every value is sealed, the worst case.
    let known = VaultState::new(16);
    let mut group = c.benchmark_group("transform");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("prepare 1000 distinct events", |b| {
        b.iter_batched(
            || (),
            |()| transformer.prepare(&messages, ClaimKind::MessageIds, now, &known, None),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, transform);
criterion_main!(benches);
