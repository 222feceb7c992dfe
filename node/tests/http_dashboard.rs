//! The dashboard in a real headless browser (Debian's `chromium`): a
//! regtest node that mines and has one settled job serves its page at `/`,
//! and the DOM Chromium renders shows the tip height `/api/status` answers
//! (give or take the blocks mined while the page loads), rows of recent
//! blocks, and, by default, the settled job's loss curve with one point
//! per segment. A screenshot is kept as `target/test-artifacts/dashboard.png`.
//!
//! Without `chromium` on the PATH the test says so and passes.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use node::testkit::{init_test_logging, regtest_config, wait_until};
use protocol::blob::BlobKind;
use protocol::params::faucet_key;
use protocol::{Address, Amount, ChainParams, JobId, TxKind};

mod support;
use support::*;

const BOUNTY: u64 = 5_000;
const FUNDS: u64 = 1_000_000;
/// How long one Chromium run may take: it normally takes seconds.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(180);

/// The first `chromium` (or `chromium-browser`) on the PATH.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Cargo's target directory: the nearest ancestor of this test binary that
/// holds Cargo's `CACHEDIR.TAG`, else `CARGO_TARGET_DIR`, else the
/// workspace's `target`.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|dir| dir.join("CACHEDIR.TAG").is_file())
                .map(Path::to_path_buf)
        })
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Loads `url` in headless Chromium, lets the page run for ten seconds of
/// virtual time, saves a screenshot to `screenshot` and returns the DOM.
fn render(chromium: &Path, url: &str, screenshot: &Path) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let dom_path = dir.path().join("dom.html");
    let log_path = dir.path().join("chromium.log");
    let mut child = Command::new(chromium)
        .arg("--headless")
        .arg("--no-sandbox")
        .arg("--disable-gpu")
        .arg("--disable-dev-shm-usage")
        .arg("--no-first-run")
        .arg("--no-default-browser-check")
        .arg("--hide-scrollbars")
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg("--virtual-time-budget=10000")
        .arg("--window-size=1280,1600")
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(File::create(&dom_path)?)
        .stderr(File::create(&log_path)?)
        .spawn()?;
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "chromium did not finish within {BROWSER_TIMEOUT:?}:\n{}",
                log_tail(&log_path)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let dom = std::fs::read_to_string(&dom_path)?;
    anyhow::ensure!(
        status.success() && !dom.is_empty(),
        "chromium failed ({status}), DOM of {} bytes:\n{}",
        dom.len(),
        log_tail(&log_path)
    );
    Ok(dom)
}

/// The last lines of Chromium's log, without its complaints about D-Bus,
/// which a container does not run.
fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains("dbus")).collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The markup from the element with `id` to the first `close` after it.
fn element<'a>(dom: &'a str, id: &str, close: &str) -> anyhow::Result<&'a str> {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .ok_or_else(|| anyhow::anyhow!("no #{id} in the DOM"))?;
    let rest = &dom[start..];
    let end = rest
        .find(close)
        .ok_or_else(|| anyhow::anyhow!("#{id} has no {close}"))?;
    Ok(&rest[..end])
}

/// The text of the element with `id`, which holds only text.
fn text_of<'a>(dom: &'a str, id: &str) -> anyhow::Result<&'a str> {
    let markup = element(dom, id, "</")?;
    let open_end = markup
        .find('>')
        .ok_or_else(|| anyhow::anyhow!("#{id} is not closed"))?;
    Ok(markup[open_end + 1..].trim())
}

/// The attribute `name` of the element with `id`.
fn attribute_of(dom: &str, id: &str, name: &str) -> anyhow::Result<String> {
    let tag = element(dom, id, ">")?;
    let key = format!(" {name}=\"");
    let start = tag
        .find(&key)
        .ok_or_else(|| anyhow::anyhow!("#{id} has no {name}"))?
        + key.len();
    let end = tag[start..]
        .find('"')
        .ok_or_else(|| anyhow::anyhow!("#{id}'s {name} is not closed"))?;
    Ok(tag[start..start + end].to_string())
}

/// Rows of the table `#id`'s body, leaving out the placeholder row an
/// empty table shows.
fn body_rows(dom: &str, id: &str) -> anyhow::Result<usize> {
    let table = element(dom, id, "</table>")?;
    let body = table
        .split_once("<tbody>")
        .map(|(_, body)| body)
        .ok_or_else(|| anyhow::anyhow!("#{id} has no tbody"))?;
    Ok(body
        .split("<tr")
        .skip(1)
        .filter(|row| !row.contains("colspan"))
        .count())
}

/// `<circle>` elements of class `class` inside the SVG `#id`.
fn circles(dom: &str, id: &str, class: &str) -> anyhow::Result<usize> {
    let svg = element(dom, id, "</svg>")?;
    Ok(svg
        .split("<circle")
        .skip(1)
        .filter(|tag| {
            let tag = tag.split('>').next().unwrap_or_default();
            tag.split_once("class=\"")
                .and_then(|(_, rest)| rest.split('"').next())
                .is_some_and(|classes| classes.split_whitespace().any(|c| c == class))
        })
        .count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_tip_the_blocks_and_a_settled_jobs_loss_curve() -> anyhow::Result<()>
{
    let Some(chromium) = chromium() else {
        println!("SKIP: chromium not found; install Debian's chromium to run the dashboard test");
        return Ok(());
    };
    init_test_logging();
    let dir = tempfile::tempdir()?;
    let mut config = regtest_config(dir.path(), vec![]);
    config.mine = Some(Address([0xa1; 32]));
    config.mine_interval = Duration::from_millis(250);
    config.http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let node = node::start(config).await?;
    let api = api_of(&node)?;

    // A worker with coins for its bond, and an iris job of 64 segments with
    // the shortest challenge window.
    let worker = key(0x31);
    let worker_address = address(&worker);
    let dataset = iris()?;
    put_blob(&api, BlobKind::Dataset, dataset.to_blob()).await?;
    let window = ChainParams::regtest().job_limits.min_challenge_window;
    let spec = iris_spec(&dataset, 10, 0, window)?;
    let fund = sign(
        &faucet_key(),
        0,
        FEE,
        TxKind::Transfer {
            to: worker_address,
            amount: Amount(FUNDS),
        },
    )?;
    let post_tx = post(1, &spec, BOUNTY, 10_000)?;
    let job = JobId::from(post_tx.id()?);
    submit(&api, fund).await?;
    submit(&api, post_tx).await?;
    wait_job(&node, job, "the job posted", |_| true).await?;
    wait_until("the worker funded", WAIT, || {
        let chain = node.chain().clone();
        async move {
            matches!(chain.balance(worker_address).await,
                Ok(b) if b.account.balance.0 >= FUNDS)
        }
    })
    .await
    .map_err(anyhow::Error::msg)?;

    // An honest result, its states served so that the node's audit can
    // replay its sample; it settles at the end of its window.
    let claim = honest(&job, &worker_address, &spec, &dataset)?;
    claim.serve(&api).await?;
    submit(&api, claim.tx(&worker, 0, job)?).await?;
    wait_job(&node, job, "the result settled", is_fulfilled).await?;
    let settled = call(&api, move |api| api.job(&job)).await??;
    assert_eq!(settled.segments, spec.segments);
    assert_eq!(
        settled.loss_curve.as_ref().map(Vec::len),
        Some(spec.segments as usize),
        "the API answers one loss per segment"
    );

    // The page, rendered.
    let artifacts = target_dir().join("test-artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let before = call(&api, |api| api.status()).await??.height;
    let page = format!("{}/", api.url());
    let dom = tokio::task::spawn_blocking({
        let screenshot = screenshot.clone();
        move || render(&chromium, &page, &screenshot)
    })
    .await??;
    let after = call(&api, |api| api.status()).await??.height;
    println!("dashboard screenshot: {}", screenshot.display());

    let shown: u64 = text_of(&dom, "tip-height")?
        .parse()
        .map_err(|e| anyhow::anyhow!("#tip-height is not a height: {e}"))?;
    assert!(
        (before..=after).contains(&shown),
        "#tip-height shows {shown}; /api/status answered {before} before the page loaded and {after} after"
    );
    let blocks = body_rows(&dom, "blocks")?;
    assert!(blocks > 0, "#blocks has no rows");
    assert!(body_rows(&dom, "jobs")? > 0, "#jobs has no rows");
    assert_eq!(
        attribute_of(&dom, "job-id", "title")?,
        job.to_string(),
        "the page shows the settled job by default"
    );
    assert_eq!(
        circles(&dom, "loss-chart", "loss-point")?,
        spec.segments as usize,
        "one loss point per segment"
    );
    assert!(
        !text_of(&dom, "job-explanation")?.is_empty(),
        "the job's explanation is shown"
    );
    assert!(
        std::fs::metadata(&screenshot)?.len() > 0,
        "chromium wrote no screenshot"
    );
    node.stop().await;
    Ok(())
}
