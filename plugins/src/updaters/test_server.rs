//! A raw HTTP/1.1 server for the updaters' tests: it can announce more
//! bytes than it sends, or stall halfway, which no well-behaved framework
//! server will do.

use std::time::Duration;

/// Answers every request with `body`, announcing `announced` bytes, and
/// sleeping `pause` after the first half.
pub(crate) async fn raw_server(body: Vec<u8>, announced: usize, pause: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let body = body.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut head = [0u8; 4096];
                let _ = socket.read(&mut head).await;
                let header = format!("HTTP/1.1 200 OK\r\ncontent-length: {announced}\r\n\r\n");
                let _ = socket.write_all(header.as_bytes()).await;
                let half = body.len() / 2;
                let _ = socket.write_all(&body[..half]).await;
                let _ = socket.flush().await;
                tokio::time::sleep(pause).await;
                let _ = socket.write_all(&body[half..]).await;
            });
        }
    });
    format!("http://{addr}/file")
}
